# Source at the start of every device command, from the repository root, with [".whl"] carried
# (../shared/device/fetch-wheels.sh fills .whl/ once):
# installs the carried wheels (.whl/prelude.sh) and this package (editable, offline) into the device's Python.
source .whl/prelude.sh
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/gdn-install.log 2>&1 \
  || { echo "device_env: gdn install failed"; tail -5 /tmp/gdn-install.log; }
python3 -c "import gdn.export, gdn.kernels, gdn.runner" || echo "device_env: import gdn failed"
