#!/usr/bin/env bash
# Docker Compose with whichever version this machine has: `docker compose` (v2, the plugin) when it runs, else
# `docker-compose` (v1; 1.29 or later reads docker-compose.yml: profiles need 1.28, `service_completed_successfully`
# 1.29). Arguments go to compose unchanged:
#   scripts/compose.sh up                     what `make up` runs (the README's first command)
#   scripts/compose.sh run --rm retrain       any other compose command of docker-compose.yml's comments
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if docker compose version >/dev/null 2>&1; then
  exec docker compose "$@"
fi
if command -v docker-compose >/dev/null 2>&1; then
  version="$(docker-compose version --short 2>/dev/null || true)"
  IFS=. read -r major minor _ <<<"${version:-0.0.0}"
  if [[ "$major" == 1 && "${minor:-0}" -lt 29 ]]; then
    echo "docker-compose $version is too old for docker-compose.yml (profiles and service_completed_successfully need 1.29);" >&2
    echo "install Compose v2 (the docker-compose-plugin package from Docker's apt repository) or docker-compose 1.29" >&2
    echo "(Debian 12 and Ubuntu 22.04 ship 1.29.2: apt-get install docker-compose)." >&2
    exit 1
  fi
  exec docker-compose "$@"
fi
cat >&2 <<'EOF'
Docker Compose is not installed: neither `docker compose` (v2) nor `docker-compose` (v1) runs here.
  Compose v2 on Debian/Ubuntu: add Docker's apt repository (https://docs.docker.com/engine/install/debian/ or .../ubuntu/)
    and `apt-get install docker-compose-plugin`; or put the release binary docker-compose-linux-$(uname -m) from
    https://github.com/docker/compose/releases at ~/.docker/cli-plugins/docker-compose (chmod +x).
  Compose v1 (Debian 12 / Ubuntu 22.04 ship 1.29.2, enough for this project): apt-get install docker-compose
Then run `make up` again (or `docker compose up` / `docker-compose up`).
EOF
exit 127
