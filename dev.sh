#!/usr/bin/env bash
# requestflow's one entry point for people and CI. Each command sets up everything it needs first:
#   ./dev.sh demo    the main job: classify the sample images, then a sweep through Airflow with this machine as
#                    the board (2 models x 2 backends, performance + accuracy on the shared ImageNet images) into
#                    the embedded PostgreSQL, and its scoreboard
#   ./dev.sh test    the whole test suite (what CI runs)
#   ./dev.sh bench   the runner against bare reference loops (bench/); `bench all`: every benchmark -> RESULTS.md
#   ./dev.sh shell   a shell inside the project's virtual environment
# Set-up: a Python 3.11 virtual environment in .venv (or $REQUESTFLOW_VENV), installed from the pinned
# constraints in requirements/, reinstalled only when those or pyproject.toml change.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${REQUESTFLOW_VENV:-$ROOT/.venv}
ARCH=$(uname -m)
CONSTRAINTS=$ROOT/requirements/constraints-$ARCH.txt
# the shared data folder beside the checkout, when there is one (else requestflow's own data folder, or none)
if [ -z "${REQUESTFLOW_DATA:-}" ] && [ -f "$ROOT/../shared/data/README.md" ]; then
    REQUESTFLOW_DATA=$(cd "$ROOT/../shared/data" && pwd); export REQUESTFLOW_DATA
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

log() { printf '\033[1m[dev.sh]\033[0m %s\n' "$*" >&2; }

find_python() {
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"; return
        fi
    done
    log "Python 3.11 not found; installing Debian's python3 (the pins are made for 3.11)"
    apt_install python3 python3-venv
    echo python3
}

apt_install() {
    local missing=()
    for package in "$@"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
    [ ${#missing[@]} -eq 0 ] && return
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    log "apt-get install ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_venv() {
    local stamp_want
    stamp_want=$(cat "$ROOT/pyproject.toml" "$CONSTRAINTS" 2>/dev/null | sha256sum | cut -c1-16)
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requestflow-stamp" 2>/dev/null)" = "$stamp_want" ]; then
        return
    fi
    local python; python=$(find_python)
    log "creating $VENV with $($python --version)"
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    local pins=()
    if [ -f "$CONSTRAINTS" ]; then pins=(-c "$CONSTRAINTS"); else log "no pins for $ARCH: resolving unpinned"; fi
    log "pip install requestflow[dev,opencl,results,controller] (TensorFlow is a large download the first time)"
    "$VENV/bin/python" -m pip install -q "${pins[@]}" -e "$ROOT[dev,opencl,results,controller]"
    # the checkout on the venv's path: the controller's packages (operators/, dags/) beside the installed library,
    # whose CLI finds the controller's commands through entry points (ADR 0007)
    "$VENV/bin/python" -c 'import site, sys; open(site.getsitepackages()[0] + "/requestflow-checkout.pth", "w").write(sys.argv[1] + "\n")' "$ROOT"
    echo "$stamp_want" > "$VENV/.requestflow-stamp"
}

# The tests use a real PostgreSQL server at 127.0.0.1:5432 (trust authentication for the postgres user).
ensure_postgres() {
    if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then return; fi
    local fresh=0
    if [ ! -d /etc/postgresql ] || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        apt_install postgresql
        fresh=1
    fi
    local version; version=$(ls /etc/postgresql | sort -V | tail -n 1)
    if [ "$fresh" = 1 ]; then  # a server we installed ourselves: let the tests in as postgres from 127.0.0.1
        sed -i '1i host all postgres 127.0.0.1/32 trust' "/etc/postgresql/$version/main/pg_hba.conf"
    fi
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return; sleep 1; done
    log "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1
}

# ArmCL builds (tests/integration/test_armcl_build.py): SCons and a C++ compiler; ccache makes a rebuild of known sources
# take seconds instead of minutes.
ensure_armcl_tools() {
    apt_install scons g++ ccache
}

check_data() {
    if [ ! -f "${REQUESTFLOW_DATA:-/nonexistent}/README.md" ]; then
        log "no shared data folder (../shared/data or \$REQUESTFLOW_DATA): weights are downloaded (offline:" \
            "random, performance only); accuracy needs ImageNet images (requestflow dataset import)"
        return 1
    fi
}

# ./dev.sh demo [IMAGE...]: the images named are classified too (default: the sample images)
demo() {
    ensure_venv
    local rf="$VENV/bin/requestflow"
    "$rf" models
    "$rf" power-meters  # which power meters --power-meter can read here: one line when there is none
    if check_data; then
        log "classify the sample images (mobilenet-v1-1.0-224, uint8, TFLite)"
        "$rf" classify "$@" --model mobilenet-v1-1.0-224 --backend tflite
        log "a sweep through Airflow, this machine as the board: 2 models x tflite (uint8) and tf (dequantized to" \
            "fp32), performance + accuracy on the 500 shared images"
        "$rf" sweep --models mobilenet-v1-0.25-128 mobilenet-v1-0.5-160 --backends tflite tf \
            --modes performance accuracy --repetitions 50 --warmup 5 --image-limit 500
        log "the Pareto frontiers (median latency vs top-1, and p90 latency vs top-1), with plain SQL on the view"
        "$rf" sql "SELECT latency_stat, board, model, backend, precision,
                   round((latency_median_s * 1000)::numeric, 3) AS median_ms,
                   round((latency_p90_s * 1000)::numeric, 3) AS p90_ms, top1 FROM pareto_frontier
                   ORDER BY latency_stat, board, latency_s"
    else
        log "classify sample images (mobilenet-v1-0.25-224, TFLite), if real weights can be had"
        "$rf" classify "$@" --model mobilenet-v1-0.25-224 --backend tflite ||
            log "classify skipped: no real weights here (the line above says why)"
        local modes=(performance)
        if "$rf" dataset where >/dev/null 2>&1; then modes+=(accuracy); fi
        log "a sweep of mobilenet-v1-0.25-224 through Airflow, this machine as the board: ${modes[*]}" \
            "(official weights if they can be had, else random ones for performance)"
        "$rf" sweep --models mobilenet-v1-0.25-224 --backends tflite --modes "${modes[@]}" --repetitions 50 \
            --warmup 5 --image-limit 500
        "$rf" sql "SELECT board, model, backend, precision, round((latency_median_s * 1000)::numeric, 3) AS median_ms,
                   round((latency_p90_s * 1000)::numeric, 3) AS p90_ms, top1, random_weights FROM scoreboard
                   ORDER BY board, model, backend"
        if [ ${#modes[@]} -eq 1 ]; then
            log "accuracy needs ImageNet validation images: requestflow dataset import ILSVRC2012_img_val.tar" \
                "--devkit ILSVRC2012_devkit_t12.tar.gz, then ./dev.sh demo again"
        fi
    fi
    log "every point's latest result: $rf scoreboard; the database: $("$rf" db url)"
}

run_tests() {
    ensure_venv
    ensure_postgres
    ensure_armcl_tools
    apt_install pocl-opencl-icd ocl-icd-opencl-dev opencl-headers clinfo gcc  # real OpenCL (PoCL) for test_clshim
    if [ "$(id -u)" -eq 0 ]; then
        bash "$ROOT/tests/farm-setup.sh"
        apt_install docker-compose chromium  # compose: docker-compose.yml checked (no engine); chromium: browser test
        apt_install qemu-user-static mmdebstrap  # arm64: trixie toolchain env, NEON under qemu-user (test_arm64_neon)
        apt_install redis-server socat  # the Celery stack's own broker and its relays (tests/celery_stack.py)
    else
        log "not root: the board-farm and compose tests skip"
    fi
    cd "$ROOT"
    "$VENV/bin/python" -m ruff check requestflow operators dags plugins tests bench
    # on REQUESTFLOW_TEST_WORKERS workers (default 2; 0: this process): the board farm's modules in one lane, the
    # rest spread (tests/lanes.py); the 25 slowest tests are listed at the end: what CI time is spent on
    "$VENV/bin/python" -m pytest -n "${REQUESTFLOW_TEST_WORKERS:-2}" --durations=25 "$@"
}

# ./dev.sh bench [ARGS]: bench_runner.py (a few minutes); bench runner|store|sweep|flops [ARGS]: that benchmark;
# bench all [ARGS]: all four one after the other (about 15 minutes), their figures written to bench/RESULTS.md
bench() {
    ensure_venv
    local name=runner
    case "${1:-}" in
        all|runner|store|sweep|flops) name=$1; shift ;;
    esac
    [ "$name" = runner ] || [ "$name" = flops ] || ensure_postgres  # store and sweep: the PostgreSQL at 5432
    cd "$ROOT"
    "$VENV/bin/python" "$ROOT/bench/bench_$name.py" "$@"
}

# ./dev.sh farm up arm64: the test farm's arm64 board (sshd in a network namespace, every command arm64 code under
# qemu-user) started for you, its AIRFLOW_CONN_ARM64 / REQUESTFLOW_BOARDS lines printed; ./dev.sh farm down stops it.
# ./dev.sh farm up arm64-vm: a full arm64 VM (qemu-system-aarch64, TCG; image made once, cached) as board arm64_vm
farm() {
    ensure_venv
    if [ "$(id -u)" -eq 0 ]; then
        bash "$ROOT/tests/farm-setup.sh"
        apt_install qemu-user-static mmdebstrap
        if [ "${2:-}" = arm64-vm ]; then apt_install qemu-system-arm arch-test; fi  # tests/arm64_vm.py
    fi
    cd "$ROOT"
    "$VENV/bin/python" -m tests.farm_cli "$@"
}

case "${1:-}" in
    demo) shift; demo "$@" ;;
    farm) shift; farm "$@" ;;
    stack) shift; ensure_venv; cd "$ROOT"; exec "$VENV/bin/python" -m tests.stack_cli "$@" ;;  # docs/scale-out.md
    test) shift; run_tests "$@" ;;
    bench) shift; bench "$@" ;;
    shell) ensure_venv; exec bash --rcfile <(echo "source '$VENV/bin/activate'") ;;
    *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
