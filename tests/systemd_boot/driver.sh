#!/bin/bash
# Runs inside the booted container (PID 1: Debian's systemd) as root, started by
# wxtokend-test.service; tests/test_systemd_boot.py reads /out/report. Each step
# installs or drives wxtokend the way README "Running under systemd" says.
set -u
W=/opt/wxtokend/bin/wxtokend
report=/out/report
: > "$report"
exec >>/out/log 2>&1
say() { echo "$*" >> "$report"; }
check() {
    local name=$1
    shift
    echo "== $name: $*"
    if "$@"; then say "ok $name"; else say "FAIL $name"; fi
}
http_get() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"; }
token_calls() { http_get http://127.0.0.1:18080/emulator/stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["apps"][sys.argv[1]]["token"])' "$1"; }
status_text() { systemctl show -p StatusText --value wxtokend; }

# WeChat, played by the emulator.
systemd-run --unit=emulator $W emulate --config /test/emulator.yaml --port 18080
for _ in $(seq 100); do http_get http://127.0.0.1:18080/emulator/stats >/dev/null 2>&1 && break; sleep 0.1; done

# The README's install steps (the venv is in the image; /src is this checkout).
install -m 0644 /src/systemd/wxtokend.service /etc/systemd/system/wxtokend.service
install -D -m 0644 /src/systemd/sysusers.d/wxtokend.conf /etc/sysusers.d/wxtokend.conf
install -D -m 0644 /src/systemd/tmpfiles.d/wxtokend.conf /etc/tmpfiles.d/wxtokend.conf
systemd-sysusers /etc/sysusers.d/wxtokend.conf
systemd-tmpfiles --create /etc/tmpfiles.d/wxtokend.conf
install -m 0640 -g wxtoken /test/config.yaml /etc/wxtokend/config.yaml
for app in shop blog bad; do
    install -m 0600 -o wxtokend -g wxtoken "/test/secret-$app" "/etc/wxtokend/secrets/$app"
done
check verify runuser -u wxtokend -- $W check -c /etc/wxtokend/config.yaml
systemctl daemon-reload

check start systemctl start wxtokend
check active systemctl is-active wxtokend
check token-file test -s /run/wxtoken/shop
check status-text sh -c "systemctl show -p StatusText --value wxtokend | grep -q 'waiting for bad'"
useradd --no-create-home --groups wxtoken consumer
check group-reads runuser -u consumer -- cat /run/wxtoken/shop
check others-cannot-read sh -c '! runuser -u nobody -- cat /run/wxtoken/shop'
sleep 1
check journal-err-has-the-failure sh -c "journalctl -u wxtokend -p err --no-pager -o cat | grep -q '\"app\": \"bad\"'"
check journal-err-not-info sh -c "! journalctl -u wxtokend -p err --no-pager -o cat | grep -q '\"event\": \"started\"'"
check journal-info-has-start sh -c "journalctl -u wxtokend -p info --no-pager -o cat | grep -q '\"event\": \"started\"'"

# systemctl reload returns once the reload is applied.
install -m 0640 -g wxtoken /test/config-blog.yaml /etc/wxtokend/config.yaml
check reload systemctl reload wxtokend
check reload-applied-on-return sh -c "$(declare -f http_get); http_get http://127.0.0.1:9735/v1/apps | grep -q '\"name\":\"blog\"'"

# A refused config fails the reload job and stays in STATUS=.
install -m 0640 -g wxtoken /test/config-broken.yaml /etc/wxtokend/config.yaml
check reload-refused sh -c '! systemctl reload wxtokend'
check still-active systemctl is-active wxtokend
check status-says-reload-failed sh -c "systemctl show -p StatusText --value wxtokend | grep -q '^reload failed'"
install -m 0640 -g wxtoken /test/config-blog.yaml /etc/wxtokend/config.yaml
check reload-again systemctl reload wxtokend
check status-cleared sh -c "! systemctl show -p StatusText --value wxtokend | grep -q 'reload failed'"

# A restart reuses the valid tokens on disk: no upstream call.
before=$(token_calls wx00000000000000b1)
check restart systemctl restart wxtokend
after=$(token_calls wx00000000000000b1)
echo "token calls for shop: before restart $before, after $after"
check restart-reuses-tokens test "$before" = "$after"

check stop systemctl stop wxtokend
check files-outlive-stop test -s /run/wxtoken/shop
journalctl -b --no-pager -o short-monotonic > /out/journal 2>&1
say done
systemctl poweroff --no-block
