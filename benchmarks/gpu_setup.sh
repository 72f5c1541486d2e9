# Make a bare GPU machine (Python 3.12 + torch, no Ray/DeepSpeed/MLflow/...) ready for svp, from the folder
# that `python -m benchmarks.gpu_bundle` builds. Source it in the repo root, so that the exports stay:
#
#     . benchmarks/gpu_setup.sh [BUNDLE]        # BUNDLE defaults to .gpu
#
# Unpacks BUNDLE/*.tar.xz (site-packages layout) and installs any BUNDLE/*.whl into /tmp/site (no index, no
# dependency resolution: the bundle holds exactly what the machine lacks; once per machine), puts /tmp/site
# and the checkout on PYTHONPATH (Ray's workers inherit it), and keeps NVLink multicast off (NCCL, PyTorch,
# NVSHMEM) on hosts whose GPUs others share.

svp_bundle=${1:-.gpu}
svp_site=/tmp/site
if [ ! -d "$svp_bundle" ]; then
    echo "gpu_setup: no bundle folder $svp_bundle (build it with: python -m benchmarks.gpu_bundle)" >&2
    return 2 2>/dev/null || exit 2
fi
mkdir -p "$svp_site"
svp_t0=$(date +%s)
# A bundle unpacked by an earlier call on the same (warm) machine is not unpacked again: the stamp names
# the bundle's files with their sizes (a carried copy gets new times).
svp_stamp=$(cd "$svp_bundle" && stat -c '%n %s' -- *.tar.xz *.whl 2>/dev/null)
if [ "$svp_stamp" != "$(cat "$svp_site/.svp-bundle" 2>/dev/null)" ]; then
    for svp_tar in "$svp_bundle"/*.tar.xz; do
        [ -e "$svp_tar" ] || continue
        tar -xJf "$svp_tar" -C "$svp_site" || { echo "gpu_setup: cannot unpack $svp_tar" >&2; return 1 2>/dev/null || exit 1; }
    done
    if ls "$svp_bundle"/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$svp_site" \
            "$svp_bundle"/*.whl || { echo "gpu_setup: pip install failed" >&2; return 1 2>/dev/null || exit 1; }
    fi
    echo "$svp_stamp" > "$svp_site/.svp-bundle"
else
    echo "gpu_setup: $svp_bundle already unpacked in $svp_site"
fi
export PYTHONPATH="$svp_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$svp_site/bin:$PATH"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export RAY_AUTH_MODE=token          # set before `ray` is imported (svp's local Ray uses token auth)
export PYTHONUNBUFFERED=1
python3 - <<'EOF' || { echo "gpu_setup: imports failed" >&2; return 1 2>/dev/null || exit 1; }
import importlib, sys
names = ["ray", "ray.train.torch", "ray.data", "deepspeed", "mlflow", "sqlalchemy", "alembic", "pydantic",
         "webdataset", "av", "diffusers", "scenedetect", "open_clip", "torchao", "torch"]
versions = {}
for name in names:
    module = importlib.import_module(name)
    versions[name] = getattr(module, "__version__", "")
print("gpu_setup: python", sys.version.split()[0], " ".join(f"{k}={v}" for k, v in versions.items() if v))
EOF
echo "gpu_setup: ready in $(( $(date +%s) - svp_t0 )) s (PYTHONPATH=$PYTHONPATH)"
