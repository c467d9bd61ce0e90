#!/usr/bin/env bash
# Shrink what the `device` tool sends (tracked + untracked-not-ignored files, at most 64 MiB)
# to what a GPU training run needs, and put it back afterwards.  Run HERE, not on the device.
#
#   bash scripts/device/tree.sh hide      # before the device call(s)
#   bash scripts/device/tree.sh size      # what would travel now (MB)
#   bash scripts/device/tree.sh restore   # right after them
#
# The repository holds ~82 MB of tracked files (raw teacher trajectories, whole test
# trajectories, archived evaluations) and so cannot travel whole.  `hide` takes HIDDEN out of
# the index (git rm --cached: the files stay on disk) and ignores them in .git/info/exclude;
# `restore` puts the index entries back from HEAD (git reset) and drops the ignore lines.
# Nothing in the working tree is touched.  While hidden, a pre-commit hook refuses commits (a
# commit then would delete those paths from the repository).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
HIDDEN=(
  data/teacher data/teacher_md data/dataset_md
  data/dataset/test_trajectories.npz data/dataset/holdout_trajectories.npz
  experiments/results benchmarks/results
)
GIT_DIR=$(git rev-parse --git-dir)
MARK="$GIT_DIR/device_hidden"
EXCLUDE="$GIT_DIR/info/exclude"
HOOK="$GIT_DIR/hooks/pre-commit"
BEGIN="# >>> scripts/device/tree.sh hide"
END="# <<< scripts/device/tree.sh hide"

size() {
  git ls-files -z -co --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 \
    | awk '{printf "travelling: %.1f MB of tracked and untracked-not-ignored files (limit 67.1 MB = 64 MiB, carried paths count too)\n", $1/1e6}'
}

case "${1:-}" in
  hide)
    if [ -e "$MARK" ]; then echo "already hidden (run: bash $0 restore)"; size; exit 0; fi
    if ! git diff --cached --quiet; then
      echo "tree.sh: staged changes: commit or unstage them first" >&2; exit 1
    fi
    paths=()
    for p in "${HIDDEN[@]}"; do
      if [ -n "$(git ls-files -- "$p" | head -1)" ]; then paths+=("$p"); fi
    done
    if [ ${#paths[@]} -eq 0 ]; then echo "nothing to hide"; size; exit 0; fi
    printf '%s\n' "${paths[@]}" >"$MARK"
    git rm -r -q --cached -- "${paths[@]}"
    mkdir -p "$(dirname "$EXCLUDE")"
    { echo "$BEGIN"; printf '/%s\n' "${paths[@]}"; echo "$END"; } >>"$EXCLUDE"
    if [ ! -e "$HOOK" ]; then
      mkdir -p "$(dirname "$HOOK")"
      printf '#!/bin/sh\n# scripts/device/tree.sh\necho "paths are hidden for the device tool: bash scripts/device/tree.sh restore first" >&2\nexit 1\n' >"$HOOK"
      chmod +x "$HOOK"
    fi
    echo "hidden: ${paths[*]}"
    size
    ;;
  restore)
    if [ ! -e "$MARK" ]; then echo "nothing hidden"; exit 0; fi
    mapfile -t paths <"$MARK"
    git reset -q -- "${paths[@]}"
    awk -v b="$BEGIN" -v e="$END" '$0 == b {skip = 1; next} $0 == e {skip = 0; next} !skip' \
      "$EXCLUDE" >"$EXCLUDE.tmp" && mv "$EXCLUDE.tmp" "$EXCLUDE"
    if [ -e "$HOOK" ] && grep -q "scripts/device/tree.sh" "$HOOK"; then rm -f "$HOOK"; fi
    rm -f "$MARK"
    if [ -n "$(git status --porcelain -- "${paths[@]}")" ]; then
      echo "tree.sh: restored, but these paths differ from HEAD:" >&2
      git status --short -- "${paths[@]}" >&2
    fi
    echo "restored: ${paths[*]}"
    ;;
  size) size ;;
  *) echo "usage: bash $0 hide|restore|size" >&2; exit 2 ;;
esac
