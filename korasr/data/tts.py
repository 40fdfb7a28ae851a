"""eSpeak NG Korean speech synthesis, from Debian's ``espeak-ng`` program or the ``espeakng-loader`` wheel.

Both give 22,050 Hz mono float audio; callers resample. Output is deterministic for a given eSpeak NG build,
text, voice, speed and pitch.
"""

from __future__ import annotations

import ctypes
import io
import shutil
import subprocess
from functools import cache

import numpy as np

ESPEAK_RATE = 22050


class EspeakUnavailable(RuntimeError):
    pass


INSTALL_HINT = (
    "eSpeak NG is needed to synthesize the sample corpus: `make setup` installs it "
    "(Debian: `apt-get install espeak-ng`; pip only: `pip install 'korasr[espeak]'`)"
)


def backend() -> str:
    """``"cli"`` when the espeak-ng program is on PATH, else ``"lib"`` when espeakng-loader is installed."""
    if shutil.which("espeak-ng"):
        return "cli"
    try:
        import espeakng_loader  # noqa: F401
    except ImportError as e:
        raise EspeakUnavailable(INSTALL_HINT) from e
    return "lib"


def version() -> str:
    if backend() == "cli":
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
        return out.split("Data at")[0].replace("eSpeak NG text-to-speech:", "").strip()
    lib = _library()
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib.espeak_Info(None).decode()


def synthesize(text: str, voice: str = "ko", speed: int = 175, pitch: int = 50) -> np.ndarray:
    """Speak ``text`` (Korean) and return float32 samples at 22,050 Hz."""
    if backend() == "cli":
        return _synthesize_cli(text, voice, speed, pitch)
    return _synthesize_lib(text, voice, speed, pitch)


def _synthesize_cli(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    import soundfile as sf

    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"]
    proc = subprocess.run(cmd, input=text.encode(), capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed on {text!r}: {proc.stderr.decode(errors='replace').strip()}")
    # espeak-ng writes a streaming WAV header with unknown sizes; read the samples after the 44-byte header.
    with sf.SoundFile(
        io.BytesIO(proc.stdout[44:]),
        format="RAW",
        subtype="PCM_16",
        samplerate=ESPEAK_RATE,
        channels=1,
        endian="LITTLE",
    ) as f:
        return f.read(dtype="float32")


# --- the shared-library route (espeakng-loader wheel) -------------------------------------------------------
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_chunks: list[np.ndarray] = []


@_CALLBACK
def _collect(wav, count, _events):  # type: ignore[no-untyped-def]
    if count > 0 and wav:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
    return 0


@cache
def _library() -> ctypes.CDLL:
    from pathlib import Path

    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
    audio_output_synchronous = 2
    rate = lib.espeak_Initialize(audio_output_synchronous, 0, data_parent, 0)
    if rate != ESPEAK_RATE:
        raise EspeakUnavailable(f"libespeak-ng initialization failed (returned {rate})")
    lib.espeak_SetSynthCallback(_collect)
    return lib


def _synthesize_lib(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    lib = _library()
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RuntimeError(f"libespeak-ng has no voice {voice!r}")
    espeak_rate, espeak_pitch = 1, 3
    lib.espeak_SetParameter(espeak_rate, speed, 0)
    lib.espeak_SetParameter(espeak_pitch, pitch, 0)
    data = text.encode() + b"\0"
    _chunks.clear()
    pos_character, chars_utf8 = 1, 1
    if lib.espeak_Synth(data, len(data), 0, pos_character, 0, chars_utf8, None, None) != 0:
        raise RuntimeError(f"libespeak-ng failed on {text!r}")
    lib.espeak_Synchronize()
    samples = np.concatenate(_chunks) if _chunks else np.zeros(0, dtype=np.int16)
    return samples.astype(np.float32) / 32768.0
