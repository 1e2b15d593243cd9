"""The notebook of a code competition, as the export stage writes it (export/kernel/kernel.py).

Kaggle runs it offline with the competition and the exported dataset attached as inputs. It
finds both under /kaggle/input, puts the dataset's `pipeline` package first on sys.path and runs
`pipeline.kernel`, which writes /kaggle/working/submission.csv. KAGGLE_INPUT and KAGGLE_WORKING
override the two folders (to run it anywhere else, e.g. a test on a copy of that tree).
"""

import os
import shutil
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # offline: no version check at import
COMPETITION = None  # filled in by the export stage
DATASET = None  # owner/slug of the exported dataset
INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working"))


def find_bundle() -> Path:
    """The attached dataset's folder: the one holding bundle.json (mount paths vary)."""
    slug = DATASET.split("/")[1]
    found = [m.parent for d in ("*", "*/*", "*/*/*") for m in INPUT.glob(f"{d}/bundle.json")]
    if not found:
        sys.exit(f"error: no bundle.json under {INPUT}: attach the dataset {DATASET}")
    return next((f for f in found if f.name == slug), found[0])


def unpacked(bundle: Path) -> Path:
    """Folders uploaded with --dir-mode zip, in case they arrive as .zip files: extracted into
    the working folder, beside a copy of the other files."""
    if (bundle / "pipeline").is_dir():
        return bundle
    dest = WORKING / "bundle"
    shutil.copytree(bundle, dest, dirs_exist_ok=True)
    for archive in dest.glob("*.zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest / archive.stem)
        archive.unlink()
    return dest


def find_competition() -> Path:
    for candidate in (INPUT / COMPETITION, INPUT / "competitions" / COMPETITION):
        if candidate.is_dir():
            return candidate
    sys.exit(f"error: {INPUT}/{COMPETITION} not found: attach the competition's data")


def main() -> int:
    bundle = unpacked(find_bundle())
    sys.path.insert(0, str(bundle))
    import pipeline  # here: after the bundle's folder is on sys.path
    from pipeline.kernel import main as run

    print(f"pipeline package: {Path(pipeline.__file__).parent}")
    work, out = WORKING / "run", WORKING / "submission.csv"
    competition = find_competition()
    return run(["--bundle", str(bundle), "--competition", str(competition),
                "--work", str(work), "--out", str(out)])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
