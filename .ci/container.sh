#!/usr/bin/env bash
# The container image, built and run (called by .ci/run; as root).
#
# Builds the Dockerfile with podman, starts compose.yaml with podman-compose
# (project `dropzone-ci`, so a real `dropzone` deployment on the same machine
# is never touched), runs both health checks, adds a user inside the
# container, moves a file up and down with OpenSSH sftp from the host, takes
# the services down and up again (volumes kept) and reads the file back.
# Whatever happens, the services are taken down and the project's volumes
# removed on exit. Any failure ends the script with a line starting
# "container.sh: FAILED:".
#
# There is no Docker engine on the CI machines and no reachable registry:
# ../shared/containers/podman-setup.sh (beside the repository) configures
# podman and provides the base images locally. docs/CONTAINERS.md says what
# users of podman see (the same things this script works around).
#
# Environment: DROPZONE_PORT (host port, default 2022), PODMAN_SETUP (the
# setup script, default ../shared/containers/podman-setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

project=dropzone-ci
export DROPZONE_IMAGE=localhost/dropzone:ci
export DROPZONE_PORT=${DROPZONE_PORT:-2022}
setup=${PODMAN_SETUP:-$repo/../shared/containers/podman-setup.sh}
user=ci
# Above one chunk and not a multiple of any block size.
file_size=$((3 * 1024 * 1024 + 12345))
health_deadline_s=120

work=$(mktemp -d)
created_env=false
started=false
probe=
timings=()
step_start=$SECONDS

fail() {
    echo "container.sh: FAILED: $*" >&2
    exit 1
}

# Prints the step that starts now and records how long the previous one took.
step() {
    finish_step
    step_name=$1
    step_start=$SECONDS
    echo "container.sh: -- $step_name"
}
step_name=
finish_step() {
    if [ -n "$step_name" ]; then
        timings+=("$(printf '%5ss  %s' $((SECONDS - step_start)) "$step_name")")
    fi
}

compose() {
    python3 -m podman_compose -p "$project" -f "$repo/compose.yaml" "$@"
}

# The container of compose service $1 (podman-compose names them
# PROJECT_SERVICE_1; the labels say it without relying on that).
container_of() {
    podman ps -a --format '{{.Names}}' \
        --filter "label=io.podman.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" | head -n 1
}

# Runs the container's health check (`podman healthcheck run`: without
# systemd podman runs none on a timer) until it passes, for at most
# $health_deadline_s seconds; fails if the container stops meanwhile.
wait_healthy() {
    local name=$1 deadline=$((SECONDS + health_deadline_s)) state
    until podman healthcheck run "$name" >/dev/null 2>&1; do
        state=$(podman inspect --format '{{.State.Status}}' "$name" 2>/dev/null || echo missing)
        [ "$state" = running ] || fail "container $name is $state, not running (its log is above)"
        if ((SECONDS >= deadline)); then
            podman healthcheck run "$name" || true
            fail "health check of $name still failing after ${health_deadline_s}s"
        fi
        sleep 1
    done
    echo "container.sh: $name healthy"
}

# Starts the services in dependency order: podman-compose on podman before
# 4.6 ignores `depends_on: condition: service_healthy`, so the key service is
# started and checked first, then the server.
start_services() {
    compose up -d eaas || fail "podman-compose up eaas"
    started=true
    wait_healthy "$(container_of eaas)"
    compose up -d dropzone || fail "podman-compose up dropzone"
    dropzone=$(container_of dropzone)
    [ -n "$dropzone" ] || fail "no container for the dropzone service"
    wait_healthy "$dropzone"
}

# OpenSSH sftp from the host, batch commands on standard input.
sftp_batch() {
    timeout 120 sftp -b - -P "$DROPZONE_PORT" -i "$work/id_ed25519" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none \
        -o ConnectTimeout=10 -o LogLevel=ERROR "$user@127.0.0.1"
}

# The server's host key, as a client sees it.
host_key() {
    timeout 30 ssh-keyscan -p "$DROPZONE_PORT" -t ed25519 127.0.0.1 2>/dev/null | awk '{print $2, $3}'
}

cleanup() {
    local rc=$?
    set +e
    finish_step
    if ((rc != 0)) && $started; then
        for svc in eaas dropzone; do
            name=$(container_of "$svc")
            [ -n "$name" ] || continue
            echo "container.sh: last log lines of $name:" >&2
            podman logs --tail 40 "$name" >&2
        done
    fi
    echo "container.sh: -- cleanup: down, remove the project's volumes"
    [ -n "$probe" ] && podman rm -f "$probe" >/dev/null
    compose down -v >/dev/null 2>&1
    # Volumes down -v left (for instance after an interrupted `up`).
    podman volume ls -q --filter "label=io.podman.compose.project=$project" |
        xargs -r podman volume rm -f >/dev/null
    $created_env && rm -f "$repo/config/dropzone.env"
    rm -rf "$work"
    if ((${#timings[@]})); then
        echo "container.sh: time per step:"
        printf '  %s\n' "${timings[@]}"
    fi
    if ((rc == 0)); then
        echo "container.sh: passed"
    else
        echo "container.sh: FAILED (exit $rc; the reason is above)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "podman setup ($setup)"
[ -f "$setup" ] || fail "$setup not found (shared/ belongs beside the repository)"
# podman lowers its own hard nproc limit to kernel.pid_max and cannot raise
# it again without CAP_SYS_RESOURCE, so containers that ask for more (the
# setup script writes the shell's hard limit into containers.conf) fail with
# "error setting rlimit type 6". Run the setup under a limit podman can give.
pid_max=$(cat /proc/sys/kernel/pid_max)
nproc=$(ulimit -Hu)
(
    if [ "$nproc" != unlimited ] && ((nproc > pid_max)); then ulimit -u "$pid_max"; fi
    bash "$setup"
) || fail "podman setup ($setup)"
python3 -m pip install --quiet --disable-pip-version-check 'podman-compose==1.6.0' ||
    fail "pip install podman-compose"
podman run --rm --network none docker.io/library/debian:bookworm-slim true ||
    fail "podman cannot start a container (see /etc/containers/containers.conf: runtime, default_ulimits)"

step "clean up what an earlier run left"
compose down -v >/dev/null 2>&1 || true
if (exec 3<>"/dev/tcp/127.0.0.1/$DROPZONE_PORT") 2>/dev/null; then
    fail "port $DROPZONE_PORT is in use on this machine: set DROPZONE_PORT to a free port"
fi
if [ ! -e config/dropzone.env ]; then
    cp config/dropzone.env.example config/dropzone.env
    created_env=true
fi

step "image build (podman build --format docker)"
# --format docker: the OCI format has no HEALTHCHECK, podman would drop it.
podman build --format docker -t "$DROPZONE_IMAGE" . >"$work/build.log" 2>&1 || {
    tail -n 60 "$work/build.log" >&2
    fail "podman build (the last lines of its output are above)"
}
tail -n 3 "$work/build.log"

step "image checks"
healthcheck=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$DROPZONE_IMAGE")
[[ $healthcheck == *'"healthcheck"'* ]] ||
    fail "the image has no HEALTHCHECK ($healthcheck; built without --format docker?)"
echo "container.sh: image size: $(podman image inspect --format '{{.Size}}' "$DROPZONE_IMAGE") bytes"
for bin in dropzone dropzone-eaas; do
    version=$(podman run --rm --network none "$DROPZONE_IMAGE" "$bin" --version) ||
        fail "$bin --version in the image"
    [[ $version == "$bin "[0-9]* ]] || fail "$bin --version prints '$version', not '$bin VERSION'"
done
probe=$(podman create "$DROPZONE_IMAGE" true)
for bin in dropzone dropzone-eaas; do
    podman cp "$probe:/usr/local/bin/$bin" "$work/$bin" || fail "copying $bin out of the image"
done
podman rm "$probe" >/dev/null
probe=
command -v readelf >/dev/null || fail "readelf (binutils) is needed to check the binaries"
for bin in dropzone dropzone-eaas; do
    echo "container.sh: /usr/local/bin/$bin: $(stat -c %s "$work/$bin") bytes"
    readelf -S --wide "$work/$bin" >"$work/$bin.sections" || fail "readelf $bin"
    # Not .debug_gdb_scripts: a few loaded bytes naming gdb's pretty-printers.
    if grep -qE '\.debug_(info|line|str|ranges|rnglists|loc|loclists|abbrev|aranges) ' "$work/$bin.sections"; then
        fail "/usr/local/bin/$bin in the image has debug sections (the Dockerfile strips them)"
    fi
done

step "start the services, health checks"
start_services

step "add a user inside the container"
ssh-keygen -q -t ed25519 -N '' -C "$project" -f "$work/id_ed25519"
podman exec -i "$dropzone" dropzone user add "$user" --authorized-key /dev/stdin \
    <"$work/id_ed25519.pub" || fail "dropzone user add inside $dropzone"

step "sftp round trip"
head -c "$file_size" /dev/urandom >"$work/up.bin"
key_before=$(host_key)
[ -n "$key_before" ] || fail "no ed25519 host key from 127.0.0.1:$DROPZONE_PORT"
printf 'put %s up.bin\nget up.bin %s\n' "$work/up.bin" "$work/down1.bin" | sftp_batch ||
    fail "sftp upload and download"
cmp "$work/up.bin" "$work/down1.bin" || fail "the file read back differs from the one sent"

step "down and up again (volumes kept)"
compose down || fail "podman-compose down"
start_services

step "read the file back after the restart"
[ "$(host_key)" = "$key_before" ] || fail "the host key changed across the restart (host_keys volume)"
printf 'get up.bin %s\n' "$work/down2.bin" | sftp_batch || fail "sftp download after the restart"
cmp "$work/up.bin" "$work/down2.bin" || fail "the file read after the restart differs from the one sent"
podman exec "$dropzone" dropzone verify || fail "dropzone verify inside $dropzone"
