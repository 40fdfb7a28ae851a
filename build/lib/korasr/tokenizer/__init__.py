"""Tokenizers for NeMo CTC models: SentencePiece over jamo or syllables, char vocabularies, unit reports."""
