# Sourced by the device scripts: installs the carried py3.12 wheels ($WHEELS, e.g. .whl) into
# /tmp/site and puts them and the repository on PYTHONPATH; with WHEELS empty (or missing), the
# installed packages serve (a CPU dry run here).
if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
