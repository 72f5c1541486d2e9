"""Build `.gpu/`, the folder a device call carries so that a bare GPU machine can run
benchmarks/two_gpu_training.py (then `source benchmarks/gpu_setup.sh` there unpacks it into /tmp/site).

    python -m benchmarks.gpu_bundle [--out .gpu] [--cache /tmp/svp-gpu-wheels] [--max-mib 55]

The GPU machine has Python 3.12, torch, transformers, pandas, pyarrow, … (GPU_PACKAGES, its package list of
2026-11-17) and none of Ray, DeepSpeed, MLflow, pydantic, WebDataset, PyAV, diffusers, PySceneDetect, open_clip. What the
recipe imports is the closure of ROOTS' requirements (read from this environment's installed metadata, so the
versions are the ones svp is tested with, markers evaluated for CPython 3.12 on x86-64 Linux) minus that list.
Every one is fetched as a cp312 / abi3 / py3 manylinux x86-64 wheel (`pip download --only-binary=:all:
--python-version 3.12`); DeepSpeed, which has only an sdist, is built here as a pure wheel (`pip wheel`,
DS_BUILD_OPS=0: no compiled ops, the GPU machine compiles what it needs at run time). Then, to fit the carry
limit, the wheels are installed here into a staging folder (`pip install --target --no-deps` for that
platform: unpacking, no code runs), debug symbols are stripped from the shared libraries (`strip
--strip-unneeded`: ray's _raylet.so, gcs_server and raylet; av.libs), Ray's jars and RLlib and every bundled
test suite are left out, and the result is packed as xz tars: `.gpu/ray.tar.xz`, `.gpu/av.tar.xz` and
`.gpu/site.tar.xz` (everything else), each holding site-packages' layout.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from packaging.requirements import Requirement

ROOTS = (
    "ray[data,train]",
    "deepspeed",
    "mlflow-skinny",  # the tracking client and the sqlite store's code, without the server's packages
    "sqlalchemy",  # the sqlite store
    "alembic",
    "pydantic",
    "webdataset",
    "av",
    "diffusers",
    "scenedetect-headless",
    "open_clip_torch",  # the aesthetic scorer and CLIP similarity (benchmarks/gpu_pipeline.py)
    "torchao",  # float8 inference and training (benchmarks/fp8_compare.py)
)
# The GPU machine's image 'cuda' (device KINDS.md, read 2026-11-17): carried only when missing here.
_GPU_IMAGE_PACKAGES = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
    nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
    onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
    pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
    pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
    scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
    tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
    wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"""
GPU_PACKAGES = set(_GPU_IMAGE_PACKAGES.split())
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)] + ["manylinux2014_x86_64"]
BUILT_FROM_SDIST = {"deepspeed"}
# Left out of the tars: Java jars, RLlib, test suites, diffusers' pipelines (16 MB; svp loads only its
# autoencoder models: `from diffusers import AutoencoderKLWan` works without them). None is imported by a
# training or curation run.
DROP = re.compile(r"^(ray/jars|ray/rllib|diffusers/pipelines|[^/]+/tests?)(/|$)")
# A wheel tag the GPU machine's pip accepts: CPython 3.12 (or abi3 from 3.x, or pure), manylinux x86-64.
GOOD_TAG = re.compile(r"-(py3|py2\.py3|cp3\d+)-(none|abi3|cp312)-(any|(manylinux\w*x86_64\.?)+)\.whl$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots=ROOTS) -> dict[str, str]:
    """{distribution: version} of everything ROOTS need on the GPU machine that its image lacks."""
    found: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = norm(req.name)
        if name in GPU_PACKAGES or (name in found and set(req.extras) <= found[name]):
            continue
        found[name] = found.get(name, set()) | set(req.extras)
        for text in md.distribution(name).requires or []:
            sub = Requirement(text)
            extras = found[name] or {""}
            if sub.marker is None or any(sub.marker.evaluate({**TARGET_ENV, "extra": e}) for e in extras):
                todo.append(sub)
    return {name: md.version(name) for name in sorted(found)}


def fetch(packages: dict[str, str], cache: Path) -> list[Path]:
    """One wheel per package in `cache` (downloaded or built once; kept between builds)."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = []
    for name, version in packages.items():
        have = _wheel_in(cache, name, version)
        if have is None:
            _get_wheel(name, version, cache)
            have = _wheel_in(cache, name, version)
        if have is None:
            raise SystemExit(f"gpu_bundle: no wheel of {name}=={version} in {cache}")
        if not GOOD_TAG.search(have.name):
            raise SystemExit(f"gpu_bundle: {have.name} is not a cp312/abi3/py3 manylinux x86-64 wheel")
        wheels.append(have)
    return wheels


def _wheel_in(cache: Path, name: str, version: str) -> Path | None:
    for wheel in cache.glob("*.whl"):
        dist, ver = wheel.name.split("-")[:2]
        if norm(dist) == name and ver == version:
            return wheel
    return None


def _get_wheel(name: str, version: str, cache: Path) -> None:
    pip = [sys.executable, "-m", "pip"]
    if name in BUILT_FROM_SDIST:  # no binary on PyPI: a pure wheel built from the sdist, without ops
        cmd = pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(cache), f"{name}=={version}"]
        subprocess.run(cmd, check=True, env={**os.environ, "DS_BUILD_OPS": "0"})
        return
    cmd = pip + ["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    cmd += ["--implementation", "cp", "-d", str(cache), f"{name}=={version}"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd, check=True)


def stage(wheels: list[Path], staging: Path) -> None:
    """Unpack the wheels into `staging` as site-packages (pip for the GPU machine's platform; no code runs)."""
    if staging.exists():
        shutil.rmtree(staging)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--no-index"]
    cmd += [
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "--target",
        str(staging),
    ]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + [str(w) for w in wheels], check=True)
    for lib in [*staging.rglob("*.so"), *staging.rglob("*.so.*"), *(staging / "ray/core/src/ray").rglob("*")]:
        if lib.is_file() and not lib.is_symlink() and _is_elf(lib):
            subprocess.run(["strip", "--strip-unneeded", str(lib)], check=False, capture_output=True)


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def pack(staging: Path, out: Path, prebuilt: Path | None = None) -> dict[str, int]:
    """ray.tar.xz (ray + its dist-info), av.tar.xz (av, av.libs, dist-info), site.tar.xz (the rest).

    `prebuilt`: a folder with ray.tar.xz / av.tar.xz packed the same way earlier (xz of them takes minutes).
    """
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[Path]] = {"ray": [], "av": [], "site": []}
    for entry in sorted(staging.iterdir()):
        top = entry.name.split("-")[0].split(".")[0]
        groups[top if top in ("ray", "av") else "site"].append(entry)
    sizes = {}
    for group, entries in groups.items():
        target = out / f"{group}.tar.xz"
        if prebuilt is not None and (prebuilt / target.name).is_file() and group != "site":
            shutil.copyfile(prebuilt / target.name, target)
            sizes[target.name] = target.stat().st_size
            continue
        with tarfile.open(target, "w:xz", preset=9) as tar:
            for entry in entries:
                tar.add(entry, arcname=entry.name, filter=_keep)
        sizes[target.name] = target.stat().st_size
    return sizes


def _keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if DROP.match(info.name) or "__pycache__" in info.name:
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def check_tar_layout(out: Path, packages: dict[str, str]) -> None:
    """Every carried package's dist-info is at the top of one tar: site-packages' layout."""
    tops = set()
    for tar_path in out.glob("*.tar.xz"):
        with tarfile.open(tar_path) as tar:
            tops |= {m.name.removeprefix("./").split("/")[0] for m in tar.getmembers()}
    infos = {norm(t.split("-", 1)[0]) for t in tops if t.endswith(".dist-info")}
    missing = sorted(set(packages) - infos)
    if missing:
        raise SystemExit(f"gpu_bundle: no dist-info for {', '.join(missing)} in {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    p.add_argument("--cache", type=Path, default=Path("/tmp/svp-gpu-wheels"), help="downloaded/built wheels")
    p.add_argument("--max-mib", type=float, default=55.0, help="fail when .gpu/ is larger")
    p.add_argument("--prebuilt", type=Path, default=None, help="take ray.tar.xz / av.tar.xz from here")
    args = p.parse_args()
    packages = closure()
    print(f"carried ({len(packages)}): {' '.join(f'{n}=={v}' for n, v in packages.items())}", flush=True)
    wheels = fetch(packages, args.cache)
    staging = args.cache / "staging"
    stage(wheels, staging)
    if args.out.exists():
        shutil.rmtree(args.out)
    sizes = pack(staging, args.out, args.prebuilt)
    check_tar_layout(args.out, packages)
    (args.out / "packages.txt").write_text("".join(f"{n}=={v}\n" for n, v in packages.items()))
    total = sum(sizes.values()) / 2**20
    print(" ".join(f"{n} {s / 2**20:.1f} MiB" for n, s in sizes.items()) + f"; total {total:.1f} MiB")
    if total > args.max_mib:
        raise SystemExit(f"gpu_bundle: {args.out} is {total:.1f} MiB, over --max-mib {args.max_mib}")


if __name__ == "__main__":
    main()
