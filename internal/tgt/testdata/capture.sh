#!/bin/sh
# Regenerates the canned tgtadm output in this directory from a real tgtd
# (Debian 12 tgt 1.0.85). Run as root from this directory; it starts its own
# tgtd on control port and portal 23260 and stops it at the end.
set -eu
P=23260
I=iqn.2026-11.io.bulkhead:backupd-1
D=$(mktemp -d)
TGTD=""
trap 'tgtadm -C $P --op delete --mode system >/dev/null 2>&1 || true; wait $TGTD 2>/dev/null || true; rm -rf "$D" /var/run/tgtd/socket.$P /var/run/tgtd/socket.$P.lock' EXIT
tgtd -f -C $P --iscsi portal=127.0.0.1:$P >"$D/tgtd.log" 2>&1 &
TGTD=$!
until tgtadm -C $P --op show --mode system >/dev/null 2>&1; do sleep 0.1; done
T="tgtadm -C $P --lld iscsi"

$T --mode target --op show >show-empty.txt
$T --mode account --op show >accounts-empty.txt
$T --mode portal --op show >portal.txt

head -c 8388608 /dev/urandom >"$D/a.img"
truncate -s 16777216 "$D/b.img"
truncate -s 104857600 "$D/c.img"
truncate -s 1000000 "$D/d.img"

$T --mode target --op new --tid 1 --targetname iqn.2026-11.io.bulkhead:snap-a
$T --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$D/a.img" --bstype rdwr
$T --mode target --op bind --tid 1 --initiator-address 10.0.0.1
$T --mode target --op bind --tid 1 --initiator-name $I
$T --mode account --op new --user u1 --password secret123456
$T --mode account --op new --user u3 --password secret123456
$T --mode account --op bind --tid 1 --user u1
$T --mode account --op bind --tid 1 --user u3 --outgoing

$T --mode target --op new --tid 2 --targetname iqn.2026-11.io.bulkhead:snap-b
$T --mode logicalunit --op new --tid 2 --lun 1 --backing-store "$D/b.img" --bstype rdwr
$T --mode logicalunit --op update --tid 2 --lun 1 --params readonly=1

$T --mode target --op new --tid 5 --targetname iqn.2010-01.org.example:foreign
$T --mode logicalunit --op new --tid 5 --lun 1 --backing-store "$D/c.img" --bstype rdwr
$T --mode logicalunit --op new --tid 5 --lun 2 --backing-store "$D/d.img" --bstype rdwr
$T --mode target --op bind --tid 5 --initiator-address ALL

$T --mode account --op show >accounts.txt

# Two sessions on target 1 while show runs.
PERF=""
for i in 1 2; do
	timeout -s KILL 4 iscsi-perf -x 0 -i $I "iscsi://u1%secret123456@127.0.0.1:$P/iqn.2026-11.io.bulkhead:snap-a/1" >/dev/null 2>&1 &
	PERF="$PERF $!"
done
sleep 1.5
$T --mode target --op show | sed "s|$D/|/srv/bulkhead/|" >show.txt
wait $PERF || true
for t in 1 2 5; do $T --mode target --op delete --force --tid $t; done
