//! `shg logs`: streams kept apart, `--tail`, `--follow`, and the size cap on a chatty service.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{toml_list, Gateway};

/// Prints a fixed opening (paced, so the two streams interleave in a known order), then
/// prints whatever is put in /data/say.
const CHATTY_SCRIPT: &str =
    "echo out-1; sleep 0.2; echo err-1 >&2; sleep 0.2; echo out-2; sleep 0.2; \
    echo err-2 >&2; sleep 0.2; echo ready; \
    while true; do if [ -f /data/say ]; then cat /data/say; rm /data/say; fi; sleep 0.1; done";

#[test]
fn logs_show_both_streams_tail_and_follow() {
    let gw = Gateway::start();
    let manifest = format!(
        "name = \"chatty\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n[run]\ncommand = {}\n",
        toml_list(&["/bin/sh", "-c", CHATTY_SCRIPT])
    );
    gw.install("chatty", &manifest, &[]);
    gw.wait_running("chatty");
    crate::harness::eventually(
        "the opening lines in the log",
        Duration::from_secs(15),
        || {
            gw.shg_ok(&["logs", "chatty"])
                .stdout
                .contains("ready")
                .then_some(())
        },
    );

    let all = gw.shg_ok(&["logs", "chatty"]);
    assert_eq!(
        all.stdout, "out-1\nout-2\nready\n",
        "stdout lines go to stdout:\n{all}"
    );
    assert_eq!(
        all.stderr, "err-1\nerr-2\n",
        "stderr lines go to stderr:\n{all}"
    );

    let tail = gw.shg_ok(&["logs", "chatty", "--tail", "2"]);
    assert_eq!(
        (tail.stdout.as_str(), tail.stderr.as_str()),
        ("ready\n", "err-2\n"),
        "{tail}"
    );

    let stamped = gw.shg_ok(&["logs", "chatty", "--tail", "1", "--timestamps"]);
    let line = stamped.stdout.trim_end();
    assert!(
        line.ends_with(" ready") && line.len() > " ready".len() + 10,
        "no time before the line: {stamped}"
    );

    // Follow: what is there, then what comes later, until the client is stopped.
    let mut follower = gw.spawn_shg(
        &["logs", "chatty", "--follow"],
        Stdio::piped(),
        Stdio::null(),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = follower.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for_line = |wanted: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !seen.iter().any(|l| l == wanted) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => {
                    panic!("`shg logs -f` did not show {wanted:?} within 15s; it showed {seen:?}")
                }
            }
        }
    };
    wait_for_line("ready", &mut seen);
    for later in ["later-1", "later-2"] {
        gw.shg_ok(&[
            "exec",
            "chatty",
            "--",
            "sh",
            "-c",
            // Written aside and renamed, so the service never reads a half-written file.
            &format!("echo {later} > /data/say.tmp && mv /data/say.tmp /data/say"),
        ]);
        wait_for_line(later, &mut seen);
    }
    assert_eq!(
        seen,
        ["out-1", "out-2", "ready", "later-1", "later-2"],
        "each line once, in order"
    );
    assert!(
        follower.0.try_wait().unwrap().is_none(),
        "`shg logs -f` ended on its own"
    );
    drop(follower); // kills the client, as Ctrl-C would
}

#[test]
fn a_flooding_service_keeps_at_most_two_log_segments() {
    let gw = Gateway::start();
    let line = "0123456789012345678901234567890123456789";
    // `timeout` may cut the last line short; the lone `echo` ends it. The inner shell's
    // "Terminated" notice goes to /dev/null, so `flood-over` is the last line.
    let script = format!(
        "sh -c 'timeout 4 yes {line}; :' 2>/dev/null; echo; echo flood-over; exec sleep 1000000"
    );
    let manifest = format!(
        "name = \"flood\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n[run]\ncommand = {}\n\n\
         [resources]\ncpu = {{ limit = 0.5 }}\n",
        toml_list(&["/bin/sh", "-c", &script])
    );
    gw.install("flood", &manifest, &[]);
    let logs = gw.service_dir("flood").join("logs");
    // A stored line: "<13-digit millis> o <text>\n".
    let cap = 2 * (1 << 20) + 13 + 3 + line.len() as u64 + 1;
    let size = || -> u64 {
        ["log.0", "log.1"]
            .iter()
            .map(|f| {
                std::fs::metadata(logs.join(f))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum()
    };

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut largest = 0;
    let mut saw_flood_tail = false;
    loop {
        let now = size();
        largest = largest.max(now);
        assert!(
            now <= cap,
            "the log holds {now} bytes, more than two 1 MiB segments"
        );
        let tail = gw.shg_ok(&["logs", "flood", "--tail", "1"]).stdout;
        if tail == format!("{line}\n") {
            saw_flood_tail = true;
        }
        if tail == "flood-over\n" {
            break;
        }
        if Instant::now() >= deadline {
            let raw = |f: &str| {
                let text = std::fs::read(logs.join(f)).unwrap_or_default();
                String::from_utf8_lossy(&text[text.len().saturating_sub(300)..]).into_owned()
            };
            panic!(
                "`flood-over` never became the last line; last: {tail:?}\n--tail 5: {}\nlog.0 ends {:?}\nlog.1 ends {:?}",
                gw.shg(&["logs", "flood", "--tail", "5"]),
                raw("log.0"),
                raw("log.1")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        saw_flood_tail,
        "`--tail 1` never showed the flood's own line while it ran"
    );
    assert!(
        largest > 1 << 20,
        "the flood wrote only {largest} bytes: the cap was never tested"
    );
    assert!(size() <= cap);
    let kept = gw.shg_ok(&["logs", "flood"]).stdout;
    assert!(
        kept.lines().count() > 10_000,
        "the log keeps the recent lines: {} lines",
        kept.lines().count()
    );
}

#[test]
fn following_a_log_through_its_rotation_never_repeats_a_line() {
    let gw = Gateway::start();
    let pad = "x".repeat(60);
    let script = format!("i=0; while true; do i=$((i+1)); echo \"n $i {pad}\"; done");
    let manifest = format!(
        "name = \"counter\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n[run]\ncommand = {}\n\n\
         [resources]\ncpu = {{ limit = 0.5 }}\n",
        toml_list(&["/bin/sh", "-c", &script])
    );
    gw.install("counter", &manifest, &[]);
    gw.wait_running("counter");
    let mut follower = gw.spawn_shg(
        &["logs", "counter", "--follow", "--tail", "1"],
        Stdio::piped(),
        Stdio::null(),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = follower.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let logs = gw.service_dir("counter").join("logs");
    let rotated = || {
        std::fs::metadata(logs.join("log.1"))
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    };
    let start = Instant::now();
    let mut numbers: Vec<u64> = Vec::new();
    let mut rotations_seen = 0;
    let mut was_rotated = false;
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let n = line.split_whitespace().nth(1).and_then(|n| n.parse().ok());
            numbers.push(n.unwrap_or_else(|| panic!("not a counter line: {line:?}")));
        }
        if rotated() != was_rotated {
            was_rotated = !was_rotated;
            rotations_seen += 1;
        }
    }
    drop(follower);
    assert!(
        rotations_seen > 0 || rotated(),
        "the log never rotated: the test proves nothing"
    );
    assert!(
        numbers.len() > 100,
        "`shg logs -f` showed only {} lines",
        numbers.len()
    );
    let backwards: Vec<(u64, u64)> = numbers
        .windows(2)
        .filter(|w| w[1] <= w[0])
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        backwards.is_empty(),
        "`shg logs -f` repeated or reordered lines: {:?} (of {})",
        &backwards[..backwards.len().min(10)],
        numbers.len()
    );
}
