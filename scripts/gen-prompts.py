#!/usr/bin/env python3
"""Synthesise the prompt set from each prompts/<lang>/manifest.toml with espeak-ng + sox.

Output: prompts/<lang>/<name>.wav, 8 kHz, 16-bit, mono, with 25 ms of silence at each end,
spoken at 175 words a minute (fragments of numbers at 185, with 15 ms of silence), and brought
to one loudness by `topup-ivr prompts normalize` (ITU-R BS.1770, the level `prompts check`
holds every prompt to). Run from the repository root:

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


# Fragments are joined into numbers, amounts and phone numbers ("plus one, two zero one...");
# said a little faster and with little silence around them, they read as one phrase.
FRAGMENT_PREFIXES = ("digit-", "num-", "cur-", "letter-", "minute-")
FRAGMENTS = {"plus", "and", "con", "press", "for", "for-price", "paying", "pound", "star", "number-in"}


def is_fragment(name: str) -> bool:
    return name.startswith(FRAGMENT_PREFIXES) or name in FRAGMENTS


def synth(text: str, voice: str, out: pathlib.Path, fragment: bool) -> None:
    speed, pad = ("185", "0.015") if fragment else ("175", "0.025")
    with tempfile.NamedTemporaryFile(suffix=".wav") as raw:
        subprocess.run(["espeak-ng", "-v", voice, "-s", speed, "-w", raw.name, text], check=True)
        subprocess.run(
            ["sox", raw.name, "-r", "8000", "-b", "16", "-c", "1", str(out),
             "silence", "1", "0.01", "0.1%", "reverse", "silence", "1", "0.01", "0.5%", "reverse",
             "gain", "-n", "-3", "pad", pad, pad],
            check=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("languages", nargs="*")
    ap.add_argument("--force", action="store_true", help="regenerate existing files")
    args = ap.parse_args()
    root = pathlib.Path("prompts")
    langs = args.languages or sorted(p.name for p in root.iterdir() if (p / "manifest.toml").is_file())
    made = []
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
                synth(text, v, out, is_fragment(name))
                made.append(str(out))
            print(f"{out}: {text}")
    if made:
        normalize = ["cargo", "run", "--quiet", "--bin", "topup-ivr", "--", "prompts", "normalize"]
        if subprocess.run([*normalize, *made]).returncode != 0:
            print("gen-prompts.py: normalising the prompts' loudness failed", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
