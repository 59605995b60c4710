#!/usr/bin/env bash
# Set up esnet-tf in ./.venv on a fresh Debian machine: the Debian libraries GPAW builds
# against (when run as root), then every Python dependency resolved in one pip call.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="libxc-dev libfftw3-dev libopenblas-dev"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq $missing >/dev/null || { apt-get update -qq && apt-get install -y -qq $missing >/dev/null; }
  else
    echo "setup: please install the Debian packages:$missing (needed to build GPAW)" >&2
    exit 1
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# serial GPAW build (no MPI headers needed), linked to libxc, FFTW and OpenBLAS
# The `uip` extra (CHGNet, SevenNet + torch, ~0.9 GB) only when asked:
# ESNET_UIP=1, or in CI (CI=true) where tests/test_uip.py needs it; ESNET_UIP=0 turns it off.
EXTRAS="all"
if [ "${ESNET_UIP:-$([ "${CI:-}" = true ] && echo 1 || echo 0)}" = 1 ]; then EXTRAS="all,uip"; fi
GPAW_CONFIG="$PWD/scripts/gpaw_siteconfig.py" .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
if [ "$EXTRAS" = "all,uip" ]; then
  .venv/bin/python -c "import torch, chgnet, sevenn; print('setup: uip extra: torch', torch.__version__,
    '(CUDA build)' if torch.version.cuda else '(CPU build)', '+ chgnet', chgnet.__version__, '+ sevenn', sevenn.__version__)"
fi
echo "setup: esnet-tf installed in $PWD/.venv (extras: $EXTRAS)"
