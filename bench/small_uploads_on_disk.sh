#!/usr/bin/env bash
# Times `sftp put -r` of N new 4 KiB files into a Dropzone server whose data
# directory is on a disk (bench/compare.sh keeps both servers' files on
# tmpfs, where syncs cost nothing). Usage:
#   bench/small_uploads_on_disk.sh BIN [N=300] [REPS=3] [DIR=$PWD]
# BIN is a dropzone binary (e.g. target/release/dropzone); the server runs
# in a temporary directory under DIR, which must be on the disk to measure.
set -euo pipefail
BIN=$(realpath "$1"); N=${2:-300}; REPS=${3:-3}; BASE=${4:-$PWD}
D=$(mktemp -d "$BASE/dz-small-uploads.XXXX"); cd "$D"
mkdir -p config keys src
ssh-keygen -q -t ed25519 -N '' -f keys/alice
cat > config/dropzone.toml <<T
listen = "127.0.0.1:0"
host_keys_dir = "host_keys"
data_dir = "data"
keks_dir = "keks"
[auth]
users_file = "config/users.toml"
[kms]
backend = "local"
[kms.local]
key_dir = "master_key"
secret_version = "1"
T
"$BIN" user add alice --authorized-key keys/alice.pub --config config/dropzone.toml >/dev/null
"$BIN" serve --config config/dropzone.toml > server.log 2>&1 &
PID=$!
for i in $(seq 50); do grep -q 'listening on' server.log && break; sleep 0.2; done
PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' server.log | head -1 | cut -d: -f2)
head -c $((N*4096)) /dev/urandom > all; (cd src && split -b 4096 -a 5 -d ../all f); rm all
for r in $(seq $REPS); do
  t0=$(date +%s.%N)
  sftp -q -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i keys/alice -P "$PORT" -b - alice@127.0.0.1 <<< "put -r src up$r" >/dev/null
  t1=$(date +%s.%N)
  echo "$(basename "$BIN") rep $r: $(echo "$t1 - $t0" | bc) s"
done
kill $PID; wait $PID 2>/dev/null || true
cd /; rm -rf "$D"
