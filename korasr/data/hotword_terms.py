"""The hotword evaluation set's terms (korasr.data.hotword_set): words the sample corpus must never say.

Apart from the set's builder so that the sample corpus's text (korasr.data.sample_text) can keep them out without
importing the corpus that imports it.
"""

TERMS = ["카트만두", "리스본", "헬싱키", "몬테비데오", "클레오파트라", "헤르미온느", "나폴레옹", "블록체인",
         "하이퍼루프", "메타버스", "양자컴퓨터", "트램펄린"]  # fmt: skip
UNRELATED = ["바르셀로나", "코펜하겐", "셰익스피어", "모차르트", "알고리즘", "플랫폼", "캥거루", "오케스트라",
             "타임머신", "에스컬레이터", "스테고사우루스", "파인애플"]  # fmt: skip
