#!/usr/bin/env bash
# `make deploy-dev`: build the image, push it to DEV_REGISTRY, run the migration Job and wait for it, apply
# the dev overlay with the new tag, wait for both rollouts. Each step stops the deploy with a message that
# names it. DRY_RUN=1 prints every command and the rendered manifests, and touches no cluster or registry.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV_REGISTRY=${DEV_REGISTRY:-localhost:5000}
TAG=${TAG:-$(git describe --always --dirty --abbrev=12)}
DRY_RUN=${DRY_RUN:-}
KUBECTL=${KUBECTL:-kubectl}
BUILD_FLAGS=${BUILD_FLAGS:-}
PUSH_FLAGS=${PUSH_FLAGS:-}
MIGRATE_TIMEOUT=${MIGRATE_TIMEOUT:-300s}
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-300s}
NAMESPACE=ansible-runner
DEV_IMAGE=localhost:5000/ansible-runner-service  # the image name k8s/overlays/dev renders
IMAGE=$DEV_REGISTRY/ansible-runner-service:$TAG
OUT=build/deploy-dev

step=""
say() { printf '%s\n' "$*" >&2; }
begin() { step=$1; say "==> deploy-dev: $step"; }
fail() { say "deploy-dev: FAILED at step '$step': $*"; exit 1; }
run() {
  say "+ $*"
  [[ -n $DRY_RUN ]] && return 0
  "$@" || fail "\`$*\` exited with $?"
}

if command -v podman >/dev/null; then
  ENGINE=podman
elif command -v docker >/dev/null; then
  ENGINE=docker
elif [[ -n $DRY_RUN ]]; then
  ENGINE=docker
else
  step=setup
  fail "neither podman nor docker is installed"
fi
command -v "$KUBECTL" >/dev/null || { step=setup; fail "no kubectl ($KUBECTL): install it or set KUBECTL"; }

# The dev overlay and its migration, with this deploy's image: a kustomization per rendering that only
# changes the tag, so nothing in k8s/ is edited.
render() {
  local name=$1 source=$2
  mkdir -p "$OUT/$name"
  cat >"$OUT/$name/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../$source
images:
  - name: $DEV_IMAGE
    newName: $DEV_REGISTRY/ansible-runner-service
    newTag: "$TAG"
YAML
  say "+ $KUBECTL kustomize $OUT/$name > $OUT/$name.yaml"
  "$KUBECTL" kustomize "$OUT/$name" >"$OUT/$name.yaml" || fail "the $source manifests do not render"
  if [[ -n $DRY_RUN ]]; then
    printf -- '--- # %s.yaml\n' "$name"
    cat "$OUT/$name.yaml"
  fi
}

begin "render manifests for $IMAGE"
render migrate k8s/overlays/dev/migrate
render app k8s/overlays/dev

begin "build $IMAGE"
# shellcheck disable=SC2086  # BUILD_FLAGS is a list of flags
run "$ENGINE" build $BUILD_FLAGS -t "$IMAGE" .

begin "push $IMAGE"
# shellcheck disable=SC2086
run "$ENGINE" push $PUSH_FLAGS "$IMAGE"

begin "migrate the database"
run "$KUBECTL" apply -f k8s/base/namespace.yaml
# A Job's pod template cannot change: the previous migration goes first.
run "$KUBECTL" -n "$NAMESPACE" delete job ansible-runner-migrate --ignore-not-found --wait=true
run "$KUBECTL" apply -f "$OUT/migrate.yaml"
say "+ $KUBECTL -n $NAMESPACE wait --for=condition=complete --timeout=$MIGRATE_TIMEOUT job/ansible-runner-migrate"
if [[ -z $DRY_RUN ]] && ! "$KUBECTL" -n "$NAMESPACE" wait --for=condition=complete \
    --timeout="$MIGRATE_TIMEOUT" job/ansible-runner-migrate; then
  # Every container's log: the one that waits for the database too, which is where a database that never
  # came up is named.
  "$KUBECTL" -n "$NAMESPACE" logs job/ansible-runner-migrate --all-containers=true --prefix=true --tail=50 >&2 \
    || true
  fail "the migration Job did not complete (its log is above); nothing else was changed"
fi

begin "roll out the API and the workers"
run "$KUBECTL" apply -f "$OUT/app.yaml"
run "$KUBECTL" -n "$NAMESPACE" rollout status deployment/ansible-runner-api --timeout="$ROLLOUT_TIMEOUT"
run "$KUBECTL" -n "$NAMESPACE" rollout status deployment/ansible-runner-worker --timeout="$ROLLOUT_TIMEOUT"

step=done
say "deploy-dev: $IMAGE is deployed${DRY_RUN:+ (dry run: nothing was run)}"
