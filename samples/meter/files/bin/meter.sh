#!/bin/sh
# A stand-in energy meter: one reading (watts) every $INTERVAL seconds, kept in /data.
trap 'echo "meter: stopping"; exit 0' TERM INT
echo "meter: starting, one reading every ${INTERVAL}s"
n=0
while true; do
  n=$((n + 1))
  watts=$(( (n * 37) % 900 + 150 ))
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) ${watts}W"
  echo "$line" >> /data/readings.log
  # Keep about a day of readings.
  if [ $((n % 1000)) -eq 0 ]; then
    tail -n 28800 /data/readings.log > /tmp/r && cat /tmp/r > /data/readings.log
  fi
  echo "reading $n: $line"
  sleep "${INTERVAL}" & wait $!
done
