#!/usr/bin/env bash
# A release as an ordinary bash script whose steps run once per job
# (drover step, PSFlow's blocks). Run it:
#
#   bash examples/release.sh          # builds, then waits for a go-ahead
#   drover resume --all --state waiting
#
# The second run starts again from the top: the blocks that ended print
# their kept output instead of running (the build is not redone), the
# wait passes, and the rest runs. Code outside blocks runs every time, so
# keep it cheap and harmless.
set -euo pipefail
# Record the end of a run started by hand (drover resume records the end
# of the runs it starts itself).
trap 'drover step --exit $?' EXIT

version=${VERSION:-1.4.2}
out=${OUT:-release-out}
mkdir -p "$out"

drover step build -- sh -c "echo building $version; echo 'binary $version' > '$out/app-$version'"

# A block's output is kept: a later run gets the same checksum back.
sum=$(drover step checksum -- sha256sum "$out/app-$version")
echo "checksum ${sum%% *}"

# Stops the script (status 3, set -e) with the job waiting, until an
# operator runs drover resume.
drover step --wait go-ahead

drover step publish -- sh -c "cp '$out/app-$version' '$out/published-$version'; echo published $version"
echo "release $version done"
