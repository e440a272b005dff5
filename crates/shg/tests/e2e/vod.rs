//! streamco's video in a real browser: headless Chromium plays a title from a gateway's `vod`
//! peer while the peer downloads it over BitTorrent (the origin's seed and web seed on
//! loopback), and the picture never stalls once it started.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::console::Browser;
use crate::harness::{eventually, Background, SHG};

use testdata::free_port;

fn vod() -> PathBuf {
    let binary = PathBuf::from(SHG).with_file_name("vod");
    assert!(
        binary.exists(),
        "{} is missing: `cargo build --workspace` builds it (scripts/test.sh does)",
        binary.display()
    );
    binary
}

fn spawn(dir: &Path, label: &str, args: &[&str]) -> Background {
    Background(
        Command::new(vod())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{label}.log"))).unwrap())
            .spawn()
            .expect("run vod"),
    )
}

fn answers(url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "2", url])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn chromium_plays_a_title_while_the_gateway_downloads_it_and_never_stalls_once_started() {
    let dir = tempfile::tempdir().unwrap();
    let titles = dir.path().join("titles");
    std::fs::create_dir_all(&titles).unwrap();
    // 20 s of VP8 at about 400 kbit/s: what Debian's Chromium plays without extra codecs.
    let out = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            "20",
            "-c:v",
            "libvpx",
            "-b:v",
            "400k",
            "-g",
            "25",
        ])
        .arg(titles.join("film.webm"))
        .output()
        .expect("ffmpeg (scripts/setup.sh installs it)");
    assert!(out.status.success(), "ffmpeg: {out:?}");

    let (tp, op, pp) = (free_port(), free_port(), free_port());
    let (tracker, origin) = (
        format!("http://127.0.0.1:{tp}"),
        format!("http://127.0.0.1:{op}"),
    );
    let d = dir.path();
    let _tracker = spawn(
        d,
        "tracker",
        &["tracker", "--listen", &format!("127.0.0.1:{tp}")],
    );
    eventually("the tracker", Duration::from_secs(20), || {
        answers(&format!("{tracker}/region")).then_some(())
    });
    let titles_s = titles.display().to_string();
    // The origin's seed sends 400 KB/s, eight times the title's bitrate, which the provider
    // declares: the gateway downloads as the browser starts to play (the 1 MB title takes it
    // a few seconds), and its reads wait for peers only as long as the player's buffer
    // allows. At four times, a CI run with four heavy tests on two cores once saw two stalls
    // (debug builds of the peer and librqbit starved of CPU).
    let _origin = spawn(
        d,
        "origin",
        &[
            "origin",
            "--listen",
            &format!("127.0.0.1:{op}"),
            "--titles",
            &titles_s,
            "--public-url",
            &origin,
            "--tracker",
            &tracker,
            "--bitrate",
            "film.webm=400000",
            "--seed-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--seed-upload-bps",
            "400000",
        ],
    );
    eventually("the origin", Duration::from_secs(20), || {
        answers(&format!("{origin}/catalog")).then_some(())
    });
    let cache = d.join("cache").display().to_string();
    let _peer = spawn(
        d,
        "peer",
        &[
            "peer",
            "--listen",
            &format!("127.0.0.1:{pp}"),
            "--bt-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--origin",
            &origin,
            "--tracker",
            &tracker,
            "--region",
            "north",
            "--cache",
            &cache,
            "--no-prefetch",
        ],
    );
    let peer = format!("http://127.0.0.1:{pp}");
    eventually("the peer", Duration::from_secs(20), || {
        answers(&format!("{peer}/metrics")).then_some(())
    });

    let browser = Browser::start();
    browser.go(&format!("{peer}/"));
    browser.wait(
        "the catalog on the page",
        "document.body.innerText.includes('film.webm')",
    );
    // The page's own player, as the household uses it; events recorded from the start.
    browser.js(
        "const v = document.getElementById('player'); v.muted = true;
         window.seen = []; window.stalls = 0; window.playing = false;
         v.addEventListener('playing', () => { window.playing = true; window.seen.push('playing'); });
         v.addEventListener('waiting', () => { if (window.playing) window.stalls++; window.seen.push('waiting'); });
         v.addEventListener('error', () => window.seen.push('error ' + (v.error && v.error.message)));
         play('film.webm');",
    );
    let asked = Instant::now();
    browser.wait("the picture to start", "window.playing");
    let started = asked.elapsed();
    browser.wait(
        "twelve seconds of the title to play",
        "document.getElementById('player').currentTime > 12",
    );
    let state = browser.js(
        "const v = document.getElementById('player');
         return { stalls: window.stalls, seen: window.seen, time: v.currentTime, width: v.videoWidth };",
    );
    assert_eq!(
        state["stalls"], 0,
        "the picture stalled once started: {state}"
    );
    assert_eq!(state["width"], 320, "no picture decoded: {state}");
    let metrics: serde_json::Value = serde_json::from_str(
        &String::from_utf8(
            Command::new("curl")
                .args(["-sf", &format!("{peer}/metrics")])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        metrics["origin_seed_bytes"].as_u64().unwrap_or(0) > 0,
        "the gateway did not download over BitTorrent while playing: {metrics}"
    );
    eprintln!(
        "chromium: first picture {:.0} ms after the play; {state}; peer: {metrics}",
        started.as_secs_f64() * 1e3
    );
}
