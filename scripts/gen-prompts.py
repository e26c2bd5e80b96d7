#!/usr/bin/env python3
"""Synthesise the prompt set from each prompts/<lang>/manifest.toml with espeak-ng + sox.

Output: prompts/<lang>/<name>.wav, 8 kHz, 16-bit, mono, peak-normalised to -3 dBFS, with
40 ms of silence at each end. Run from the repository root:

    scripts/gen-prompts.py            # every language, only missing files
    scripts/gen-prompts.py --force en # regenerate English
"""
import argparse
import pathlib
import subprocess
import sys
import tempfile
import tomllib

VOICES = {"en": "en-us", "es": "es-419", "vi": "vi"}


def synth(text: str, voice: str, out: pathlib.Path) -> None:
    with tempfile.NamedTemporaryFile(suffix=".wav") as raw:
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", raw.name, text], check=True)
        subprocess.run(
            ["sox", raw.name, "-r", "8000", "-b", "16", "-c", "1", str(out),
             "silence", "1", "0.01", "0.1%", "reverse", "silence", "1", "0.01", "0.1%", "reverse",
             "gain", "-n", "-3", "pad", "0.04", "0.04"],
            check=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("languages", nargs="*")
    ap.add_argument("--force", action="store_true", help="regenerate existing files")
    args = ap.parse_args()
    root = pathlib.Path("prompts")
    langs = args.languages or sorted(p.name for p in root.iterdir() if (p / "manifest.toml").is_file())
    for lang in langs:
        manifest = tomllib.loads((root / lang / "manifest.toml").read_text())["prompts"]
        voice = VOICES.get(lang, lang)
        for name, phrase in sorted(manifest.items()):
            out = root / lang / f"{name}.wav"
            if out.exists() and not args.force:
                continue
            text, v = (phrase["text"], phrase["voice"]) if isinstance(phrase, dict) else (phrase, voice)
            if name == "pause":
                subprocess.run(["sox", "-n", "-r", "8000", "-b", "16", "-c", "1", str(out), "trim", "0", "0.25"], check=True)
            else:
                synth(text, v, out)
            print(f"{out}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
