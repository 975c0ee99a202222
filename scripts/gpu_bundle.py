"""`make gpu-bundle`: what `make gpu-check` needs on a GPU machine that lacks dbgpu's smaller dependencies.

    .venv/bin/python scripts/gpu_bundle.py [--out .gpu-bundle] [--packages a,b,...] [--no-tokenizer]

A lent GPU machine (the `device` tool's image) has torch, transformers, tokenizers,
safetensors, accelerate, numpy, scipy, jinja2, tqdm, matplotlib and pytest, reaches no
package registry, and takes at most 64 MiB of carried files. Without wordfreq (the word
task's states) and platformdirs every model step of gpu-check would be skipped, and
without SmolLM2's package (93 MB: too large to carry) the random models would run with
the byte-level tokenizer instead of real BPE tries. This script, run here, writes one
folder to carry there (about 8 MB):

    OUT/site/                          pure-Python packages, copied from this environment with
                                       their dist-info: PACKAGES below, wordfreq trimmed to its
                                       English word lists (58 MB -> ~2 MB)
    OUT/tokenizers/smollm2-135m/       SmolLM2's tokenizer (save_pretrained), for
                                       random:ARCH+OUT/tokenizers/smollm2-135m
    OUT/manifest.json                  versions, files, bytes, date

`scripts/gpu_check.py` puts OUT/site on the path (its own and its steps') and uses the
tokenizer when SmolLM2's package is absent. With the device tool: `make gpu-bundle` here,
then a run with carry [".gpu-bundle"] and the command `make gpu-check`.

Only Python files and data travel (the GPU machine's Python is another version): compiled
extensions are left out and listed in the manifest, which suits the optional accelerators
of these packages (wcwidth's C module; each falls back to Python). tests/test_gpu_check.py
imports every bundled package from the bundle alone and checks the word task's 1,608 states
and SmolLM2's token ids against this environment's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# What the device image lacks of dbgpu's runtime needs (its package list, 2026-11-17, in the
# device tool's KINDS.md): platformdirs, wordfreq and gguf, and wordfreq's pure-Python needs
# that the image lacks too (its msgpack and regex are there).
PACKAGES = ("platformdirs", "wordfreq", "ftfy", "wcwidth", "langcodes", "locate", "gguf")
TOKENIZER = "smollm2-135m"
COMPILED = (".so", ".pyd", ".dylib")


def keep(package: str, rel: str) -> bool:
    """Whether a file of a distribution goes into the bundle: not outside site-packages (console
    scripts), no bytecode or compiled extension, and of wordfreq's word lists only the English
    ones."""
    if rel.startswith("..") or "__pycache__" in rel or rel.endswith((".pyc", *COMPILED)):
        return False
    if package == "wordfreq" and rel.startswith("wordfreq/data/"):
        return "_en." in Path(rel).name
    return True


def copy_distribution(package: str, site: Path) -> dict:
    """Copy one installed distribution's files (kept by `keep`) under site/: {version, files,
    bytes, left_out (its compiled extensions)}."""
    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        raise SystemExit(f"gpu_bundle: {package} is not installed here (make venv first)") from None
    files = [f for f in (dist.files or []) if keep(package, str(f))]
    compiled = [str(f) for f in (dist.files or []) if str(f).endswith(COMPILED)]
    total = 0
    for f in files:
        src = Path(dist.locate_file(f))
        if not src.is_file():
            continue
        dst = site / str(f)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        total += src.stat().st_size
    return {"version": dist.version, "files": len(files), "bytes": total, "left_out": compiled}


def save_tokenizer(alias: str, where: Path, *, cache_dir: Path | None = None) -> dict:
    """The alias's tokenizer (read from its package's GGUF, or dbgpu's cache) saved to `where`."""
    from dbgpu.models import alias_tokenizer

    tok = alias_tokenizer(alias, cache_dir=cache_dir)
    tok.save_pretrained(where)
    return {"alias": alias, "size": len(tok), "bytes": sum(p.stat().st_size for p in where.iterdir())}


def build(out: Path, *, packages=PACKAGES, tokenizer: str | None = TOKENIZER, cache_dir: Path | None = None) -> dict:
    """Write the bundle to out (built in a temporary folder beside it, then renamed over it)."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = {"written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "python": sys.version.split()[0], "packages": {}, "tokenizers": {}}
        for p in packages:
            manifest["packages"][p] = copy_distribution(p, tmp / "site")
        if tokenizer:
            manifest["tokenizers"][tokenizer] = save_tokenizer(tokenizer, tmp / "tokenizers" / tokenizer,
                                                               cache_dir=cache_dir)
        manifest["bytes"] = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu-bundle")
    ap.add_argument("--packages", default=",".join(PACKAGES), help="distributions to copy (comma-separated)")
    ap.add_argument("--no-tokenizer", action="store_true", help="leave SmolLM2's tokenizer out")
    args = ap.parse_args(argv)
    m = build(args.out, packages=[p for p in args.packages.split(",") if p],
              tokenizer=None if args.no_tokenizer else TOKENIZER)
    for name, p in m["packages"].items():
        out = f" (left out: {', '.join(p['left_out'])})" if p["left_out"] else ""
        print(f"  {name:<13} {p['version']:<10} {p['files']:>4} files {p['bytes'] / 2**20:6.2f} MiB{out}")
    for name, t in m["tokenizers"].items():
        print(f"  tokenizer {name}: {t['size']:,} tokens, {t['bytes'] / 2**20:.2f} MiB")
    print(f"{args.out}: {m['bytes'] / 2**20:.1f} MiB in all; carry it to the GPU machine and run `make gpu-check`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
