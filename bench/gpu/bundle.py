"""Build the offline GPU bundle: the Python packages a sweep needs that the lent GPU machine lacks, as one tar.xz.

    bench/gpu/pack.sh [--out .gpu-bundle] [--limit-mb 60] [--cache DIR]

That machine (device-packages.txt) has Python 3.12 with torch and transformers, no package index, and takes at
most 64 MiB of files per run, the checkout included. So the wheels pinned in bundle-requirements.txt are
downloaded here for CPython 3.12 on manylinux x86_64 (--no-deps: the list is explicit), Ray's wheel is repacked
without its Java worker and the dashboard's source maps, everything is installed into a staging folder with
`pip install --target`, and the folder is packed with xz: unpacked files compress far better than wheels (zips)
do, and the machine then needs only `tar` (check.sh). Before packing, every requirement of the project and of
every bundled package must be met by the bundle or the machine, at a version the machine is known to have.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable, Mapping
from importlib.metadata import Distribution, distributions
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

HERE = Path(__file__).resolve().parent
PYPROJECT = HERE.parent.parent / "pyproject.toml"
REQUIREMENTS = HERE / "bundle-requirements.txt"
DEVICE_PACKAGES = HERE / "device-packages.txt"
BUNDLE_NAME = "site-packages.tar.xz"
MANIFEST_NAME = "manifest.json"

PYTHON_VERSION = "3.12"
# pip matches platform tags exactly; the machine's glibc is newer than all of these
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
MARKERS = {"python_version": PYTHON_VERSION, "python_full_version": f"{PYTHON_VERSION}.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
# Files of Ray's wheel that no sweep uses: the Java worker (34.5 MB) and the dashboard's JavaScript source maps.
RAY_DROPPED = ("ray/jars/ray_dist.jar", "ray/dashboard/client/build/*.map")
# A requirement met by another package: mlflow-skinny is MLflow's client and stores at the same version;
# the full `mlflow` adds the UI, the server and ML libraries (~30 MB more).
SUBSTITUTES = {"mlflow": "mlflow-skinny"}
# The machine's own packages at versions outside the project's range, accepted since they cannot travel.
ACCEPTED_ON_MACHINE = {
    "torch": "the machine's CUDA build cannot travel (GBs); the project asks for >= 2.13, the CPU build it is "
             "developed on, and check.py is what shows whether 2.11 does on the GPU",
}
# Packages the machine has that the bundle brings anyway (first on PYTHONPATH, so these win): small ones that
# bundled packages need at recent versions, where the machine's version was never recorded and an older one
# fails at import.
REPLACED_ON_MACHINE = {
    "protobuf": "googleapis-common-protos (through Ray's dashboard and opencensus) is generated code that refuses "
                "a protobuf runtime older than 6.33.5 at import",
    "typing-extensions": "pydantic and pydantic-core need >= 4.16",
}
# Requirements left out on purpose: nothing a sweep runs needs them.
OMITTED = {
    "reasoning-gym": "`alphasweep data figfont` builds the figfont puzzles with it, before a sweep and wherever "
                     "the data is prepared; training and evaluation read the files it wrote",
    "optuna-dashboard": "a web UI over a sweep's Optuna storage, served where a user reads the study, not where "
                        "the sweep trains",
    "py-spy": "a profiler the dashboard runs as a program on request (stack dumps, flame graphs); its binary "
              "would land in a bin/ folder nobody puts on PATH there",
}


def read_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """`name==version` lines (comments and blanks skipped) -> {canonical name: version}."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise SystemExit(f"{path}:{number}: {e}") from None
        spec = list(req.specifier)
        if len(spec) != 1 or spec[0].operator != "==":
            raise SystemExit(f"{path}:{number}: pin one exact version (name==version), got {line!r}")
        pins[canonicalize_name(req.name)] = spec[0].version
    return pins


def read_device_packages(path: Path = DEVICE_PACKAGES) -> dict[str, str | None]:
    """{canonical name: version, or None where nobody recorded it}."""
    packages = {}
    for line in path.read_text().splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if name:
            packages[canonicalize_name(name)] = version or None
    return packages


def project_requirements(path: Path = PYPROJECT) -> list[Requirement]:
    """The project's own runtime requirements (pyproject.toml), extras included."""
    return [Requirement(r) for r in tomllib.loads(path.read_text())["project"]["dependencies"]]


def closure_problems(roots: Iterable[Requirement], dists: Mapping[str, Distribution], bundled: Mapping[str, str],
                     device: Mapping[str, str | None]) -> tuple[list[str], list[str]]:
    """Walk the requirements from `roots` for the machine's Python (markers, extras), reading each package's
    requirements from `dists` (metadata by canonical name), and stop at what the machine has.

    Returns (problems, unverified). SUBSTITUTES stand in for the packages they name. A problem is a requirement
    that neither the bundle (`bundled`: name -> version) nor the machine (`device`) meets, nor OMITTED excuses;
    one met at a version outside its range; or a bundled package nothing requires. Unverified: a range met by
    the machine at a version nobody recorded, or at one outside the range that ACCEPTED_ON_MACHINE accepts."""
    problems, unverified, reached = [], set(), set()
    queue = [("the project", req, frozenset({""})) for req in roots]
    seen = set()
    while queue:
        who, req, active_extras = queue.pop()
        if req.marker and not any(req.marker.evaluate({**MARKERS, "extra": e}) for e in active_extras):
            continue
        where = f"{who} needs {req}"
        name = SUBSTITUTES.get(canonicalize_name(req.name), canonicalize_name(req.name))
        if name in device and name not in bundled:
            have = device[name]
            if have is None:
                if req.specifier:
                    unverified.add(f"{where}: on the machine, version not recorded")
            elif not req.specifier.contains(Version(have), prereleases=True):
                if name in ACCEPTED_ON_MACHINE:
                    unverified.add(f"{where}: the machine has {have}, accepted: {ACCEPTED_ON_MACHINE[name]}")
                else:
                    problems.append(f"{where}: the machine has {have}")
            continue
        if name in OMITTED:
            continue
        if name not in bundled:
            problems.append(f"{where}: neither bundled nor on the machine")
            continue
        if not req.specifier.contains(Version(bundled[name]), prereleases=True):
            problems.append(f"{where}: the bundle has {bundled[name]}")
        reached.add(name)
        extras = frozenset({"", *map(canonicalize_name, req.extras)})
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        if name not in dists:
            problems.append(f"{where}: no metadata for {name}")
            continue
        queue += [(f"{name} {bundled[name]}", Requirement(r), extras) for r in dists[name].requires or []]
    problems += [f"{name} is bundled but nothing requires it" for name in sorted(set(bundled) - reached)]
    return problems, sorted(unverified)


def pip_platform_args() -> list[str]:
    args = ["--only-binary=:all:", f"--python-version={PYTHON_VERSION}", "--implementation=cp"]
    return args + [f"--platform={p}" for p in PLATFORMS]


def download(pins: Mapping[str, str], dest: Path) -> list[Path]:
    """The pinned wheels for the machine's Python and platform, without resolving dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    _pip("download", "--no-deps", *pip_platform_args(), f"--dest={dest}", *(f"{n}=={v}" for n, v in pins.items()))
    wheels = [w for w in sorted(dest.glob("*.whl"))  # a reused --cache may hold other versions
              if pins.get(canonicalize_name(w.name.split("-")[0])) == w.name.split("-")[1]]
    if missing := sorted(set(pins) - {canonicalize_name(w.name.split("-")[0]) for w in wheels}):
        raise SystemExit(f"no wheel downloaded for {', '.join(missing)}")
    return wheels


def repack_wheel(wheel: Path, patterns: tuple[str, ...]) -> list[str]:
    """Rewrite `wheel` in place without the members matching `patterns` (fnmatch) and their RECORD lines.
    Returns the dropped member names; fails if a pattern matches nothing (the wheel's layout changed)."""
    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        dropped = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
        if unmatched := [p for p in patterns if not any(fnmatch.fnmatch(n, p) for n in names)]:
            raise SystemExit(f"{wheel.name}: nothing matches {', '.join(unmatched)}")
        gone = set(dropped)
        tmp = wheel.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as out:
            for info in src.infolist():
                if info.filename in gone:
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(ln for ln in lines if ln.split(",", 1)[0] not in gone).encode()
                out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(wheel)
    return dropped


def stage(wheels: Iterable[Path], target: Path) -> None:
    """Install the wheels as the machine's Python will see them: one flat site-packages folder."""
    _pip("install", "--no-index", "--no-deps", "--no-compile", *pip_platform_args(), f"--target={target}",
         *map(str, wheels))
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts whose first line names this Python


def prepare(staging: Path, cache: Path | None = None) -> dict:
    """Download, repack Ray, stage into `staging` and check the whole; returns the manifest (sizes aside)."""
    pins, device = read_pins(), read_device_packages()
    if clash := sorted(set(pins) & set(device) - set(REPLACED_ON_MACHINE)):
        raise SystemExit(f"{REQUIREMENTS.name} pins packages the machine already has: {', '.join(clash)} "
                         "(bring one anyway by naming it in REPLACED_ON_MACHINE)")
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        wheels = download(pins, cache or Path(tmp) / "wheels")
        ray_wheel = next(w for w in wheels if canonicalize_name(w.name.split("-")[0]) == "ray")
        repacked = Path(tmp) / ray_wheel.name  # never rewrite a cached download
        shutil.copy(ray_wheel, repacked)
        dropped = repack_wheel(repacked, RAY_DROPPED)
        stage([repacked if w == ray_wheel else w for w in wheels], staging)
    dists = {canonicalize_name(d.metadata["Name"]): d for d in distributions(path=[str(staging)])}
    bundled = {name: d.version for name, d in sorted(dists.items())}
    if bundled != dict(sorted(pins.items())):
        raise SystemExit(f"staged {bundled}, expected the pins {pins}")
    problems, unverified = closure_problems(project_requirements(), dists, bundled, device)
    if problems:
        raise SystemExit("the bundle does not hold together:\n  " + "\n  ".join(problems))
    return {"python": PYTHON_VERSION, "platforms": list(PLATFORMS), "packages": bundled,
            "dropped_from_ray": dropped, "omitted": OMITTED, "unverified_on_machine": unverified,
            "unpacked_bytes": sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())}


def pack(staging: Path, out_dir: Path, manifest: dict, limit_bytes: int) -> dict:
    """Write `out_dir`/BUNDLE_NAME (xz, default preset) and its manifest; fail, leaving no bundle, when the
    bundle is larger than `limit_bytes`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle, tmp = out_dir / BUNDLE_NAME, out_dir / f"{BUNDLE_NAME}.tmp"
    if shutil.which("xz"):  # several threads
        tar = subprocess.Popen(["tar", "-C", str(staging), "-cf", "-", "."], stdout=subprocess.PIPE)
        with tmp.open("wb") as sink:
            subprocess.run(["xz", "-6", "-T0", "-c"], stdin=tar.stdout, stdout=sink, check=True)
        if tar.wait():
            raise SystemExit("tar failed while packing the bundle")
    else:
        with tarfile.open(tmp, "w:xz", preset=6) as archive:
            archive.add(staging, arcname=".")
    size = tmp.stat().st_size
    if size > limit_bytes:
        tmp.unlink()
        bundle.unlink(missing_ok=True)
        raise SystemExit(f"the bundle would be {size / 1e6:.1f} MB, over the {limit_bytes / 1e6:g} MB limit; "
                         "nothing written")
    tmp.replace(bundle)
    manifest = {**manifest, "bytes": size, "limit_bytes": limit_bytes}
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
                          check=False, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"pip {args[0]} failed:\n{done.stderr[-4000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(".gpu-bundle"), help="folder for the bundle and its manifest")
    ap.add_argument("--limit-mb", type=float, default=60.0, help="fail when the bundle is larger (MB of 10^6 bytes)")
    ap.add_argument("--cache", type=Path, help="keep the downloaded wheels here and reuse them")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpu-site-") as tmp:
        manifest = prepare(Path(tmp) / "site", args.cache)
        print(f"{len(manifest['packages'])} packages, {manifest['unpacked_bytes'] / 1e6:.0f} MB unpacked; dropped "
              f"from Ray: {', '.join(manifest['dropped_from_ray'])}; packing (minutes on 2 cores)", flush=True)
        manifest = pack(Path(tmp) / "site", args.out, manifest, int(args.limit_mb * 1e6))
    if manifest["unverified_on_machine"]:
        print(f"{len(manifest['unverified_on_machine'])} requirements are met by the machine at versions nobody "
              f"recorded: check.py checks them there ({args.out / MANIFEST_NAME} lists them)")
    print(f"bundle: {args.out / BUNDLE_NAME} {manifest['bytes'] / 1e6:.1f} MB (limit {args.limit_mb:g} MB)")


if __name__ == "__main__":
    main()
