#!/usr/bin/env bash
# Entry point of every image of this project (docker/Dockerfile, and the local PostgreSQL and Redis images):
#  1. refuses to start while a secret still holds its .env.example placeholder: any environment value that
#     contains a `change-me-...` placeholder of $MLP_ENV_EXAMPLE (the project's .env.example, copied into the
#     image) stops the container with the variable to fix, before anything is initialised with it;
#  2. waits for the TCP services named in MLP_WAIT_FOR ("host:port host:port"), and for Airflow's metadata
#     migrations when MLP_WAIT_FOR_MIGRATIONS=true (engines that ignore depends_on conditions start
#     everything at once; Kubernetes starts pods in any order), up to MLP_WAIT_TIMEOUT seconds (300);
#  3. runs the command (exec: it becomes tini's child and gets the signals).
set -euo pipefail

fail() {
    echo "mlops-entrypoint: $*" >&2
    exit 78 # EX_CONFIG: a configuration error, not worth a restart loop's retries
}

refuse_placeholders() {
    local example=${MLP_ENV_EXAMPLE:-/opt/project/.env.example} key placeholder name bad=0
    [[ -r $example ]] || return 0
    while IFS='=' read -r key placeholder; do
        [[ $key =~ ^[A-Z][A-Z0-9_]*$ && $placeholder == change-me-* ]] || continue
        while IFS= read -r name; do
            if [[ ${!name-} == *"$placeholder"* ]]; then
                echo "mlops-entrypoint: $name still contains the .env.example placeholder of $key ('$placeholder')." >&2
                bad=1
            fi
        done < <(compgen -e)
    done <"$example"
    if ((bad)); then
        fail "refusing to start. Set a real value for each variable named above in .env (never commit it), e.g." \
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))', then start the stack again."
    fi
}

wait_for() {
    local deadline=$((SECONDS + ${MLP_WAIT_TIMEOUT:-300})) target host port
    for target in ${MLP_WAIT_FOR:-}; do
        host=${target%:*} port=${target##*:}
        [[ -n $host && $port =~ ^[0-9]+$ ]] || fail "MLP_WAIT_FOR entry '$target' is not host:port"
        until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
            ((SECONDS < deadline)) || fail "$host:$port did not accept connections within ${MLP_WAIT_TIMEOUT:-300}s"
            sleep 1
        done
    done
    if [[ ${MLP_WAIT_FOR_MIGRATIONS:-false} == true ]]; then
        airflow db check-migrations --migration-wait-timeout "$((deadline - SECONDS > 0 ? deadline - SECONDS : 1))" \
            >/dev/null || fail "Airflow's metadata database is not migrated (is airflow-init failing?)"
    fi
}

refuse_placeholders
wait_for
[[ $# -gt 0 ]] || fail "no command given"
exec "$@"
