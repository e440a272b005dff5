//! How the CLI shows things to a person: aligned tables, a service's details, UTC times.
//!
//! Everything writes to a `Write` and returns its `io::Result`, so a closed pipe
//! (`shg ps | head -1`) ends the command quietly instead of panicking, and tests can read the
//! output from a buffer.

use std::io::{self, Write};

use api::{Event, ServiceDetail, ServiceSummary};
use serde_json::Value;

/// `shg ps`: one row per service; the REASON column appears only when a service has one.
pub fn services(out: &mut impl Write, services: &[ServiceSummary]) -> io::Result<()> {
    if services.is_empty() {
        return writeln!(
            out,
            "no services installed; install one with `shg install FILE`"
        );
    }
    let with_reason = services.iter().any(|s| s.reason.is_some());
    let mut header = vec![
        "NAME", "PROVIDER", "VERSION", "STATE", "HEALTH", "PID", "RESTARTS", "PRIORITY",
    ];
    if with_reason {
        header.push("REASON");
    }
    let rows = services
        .iter()
        .map(|s| {
            let mut row = vec![
                s.name.clone(),
                s.provider.clone(),
                if s.unsigned {
                    format!("{} UNSIGNED", s.version)
                } else {
                    s.version.clone()
                },
                s.state.clone(),
                s.health.clone(),
                s.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
                s.restarts.to_string(),
                s.priority.to_string(),
            ];
            if with_reason {
                row.push(s.reason.clone().unwrap_or_default());
            }
            row
        })
        .collect::<Vec<_>>();
    table(out, "", &header, &rows)?;
    let unsigned: Vec<&str> = services
        .iter()
        .filter(|s| s.unsigned)
        .map(|s| s.name.as_str())
        .collect();
    if !unsigned.is_empty() {
        writeln!(
            out,
            "WARNING: {} run{} UNSIGNED code: no key the operator trusts vouches for it (installed with --allow-unsigned, for development only)",
            unsigned.join(", "),
            if unsigned.len() == 1 { "s" } else { "" }
        )?;
    }
    Ok(())
}

/// `shg trust list`.
/// A deployment policy's selectors as a user types them: `region=lyon or model=x`, `*` for
/// every gateway, `nothing` for none.
pub fn selectors(selectors: &[std::collections::BTreeMap<String, String>]) -> String {
    if selectors.is_empty() {
        return "nothing".into();
    }
    selectors
        .iter()
        .map(|s| {
            if s.is_empty() {
                "*".to_string()
            } else {
                s.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

pub fn trust_rules(out: &mut impl Write, rules: &[api::TrustRule]) -> io::Result<()> {
    if rules.is_empty() {
        return writeln!(
            out,
            "no trusted keys: every signed install is refused; add one with `shg trust add --provider NAME KEY.pub`"
        );
    }
    let rows = rules
        .iter()
        .map(|r| {
            vec![
                r.key_id.clone(),
                r.provider.clone(),
                if r.services.is_empty() {
                    "*".into()
                } else {
                    r.services.join(",")
                },
                time(r.added_ms),
            ]
        })
        .collect::<Vec<_>>();
    table(out, "", &["KEY", "PROVIDER", "SERVICES", "ADDED"], &rows)
}

/// `shg events`: one row per event.
pub fn events(out: &mut impl Write, events: &[Event]) -> io::Result<()> {
    if events.is_empty() {
        return writeln!(out, "no events");
    }
    let rows = events
        .iter()
        .map(|e| {
            vec![
                time(e.time_ms),
                e.service.clone().unwrap_or_else(|| "-".into()),
                e.kind.clone(),
                e.message.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table(out, "", &["TIME", "SERVICE", "KIND", "MESSAGE"], &rows)
}

/// `shg inspect`: the service's fields, what its manifest asks for, its paths and its recent
/// events. `now_ms` is the current Unix time, for the uptime.
pub fn detail(out: &mut impl Write, d: &ServiceDetail, now_ms: u64) -> io::Result<()> {
    let s = &d.summary;
    writeln!(out, "{} {} from {}", s.name, s.version, s.provider)?;
    let mut fields: Vec<(&str, String)> = Vec::new();
    if !d.description.is_empty() {
        fields.push(("description", d.description.clone()));
    }
    fields.push(("state", format!("{} (should be {})", s.state, s.desired)));
    if let Some(reason) = &s.reason {
        fields.push(("reason", reason.clone()));
    }
    fields.push(("health", s.health.clone()));
    if let Some(pid) = s.pid {
        fields.push(("pid", pid.to_string()));
    }
    if let Some(started) = s.started_at_ms {
        let mut text = time(started);
        if s.pid.is_some() && now_ms >= started {
            text.push_str(&format!(" (up {})", duration(now_ms - started)));
        }
        fields.push(("started", text));
    }
    if let Some(code) = s.exit_code {
        fields.push(("exit code", code.to_string()));
    }
    fields.push(("restarts", s.restarts.to_string()));
    fields.push(("installed", time(d.installed_at_ms)));
    fields.push(("image", d.image_digest.clone()));
    fields.push((
        "signed by",
        match &s.signed_by {
            Some(key) => format!("key {key}"),
            None => "nobody: UNSIGNED (installed with --allow-unsigned)".into(),
        },
    ));
    if let Some(previous) = &d.previous_version {
        fields.push((
            "previous",
            format!("{previous} (`shg rollback {}`)", s.name),
        ));
    }
    if let Some(address) = &d.address {
        fields.push(("address", address.clone()));
    }
    fields.extend(manifest_fields(&d.manifest));
    list(out, "  ", &fields)?;

    writeln!(out, "paths")?;
    let p = &d.paths;
    list(
        out,
        "  ",
        &[
            ("rootfs", p.rootfs.clone()),
            ("data", p.data.clone()),
            ("bundle", p.bundle.clone()),
            ("logs", p.logs.clone()),
        ],
    )?;

    writeln!(out, "recent events")?;
    if d.events.is_empty() {
        return writeln!(out, "  none");
    }
    let rows = d
        .events
        .iter()
        .map(|e| vec![time(e.time_ms), e.kind.clone(), e.message.clone()])
        .collect::<Vec<_>>();
    table(out, "  ", &["TIME", "KIND", "MESSAGE"], &rows)
}

/// The parts of the validated manifest an operator looks for first. The manifest travels as
/// loose JSON, so anything missing or shaped differently is left out rather than refused.
fn manifest_fields(m: &Value) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    if let Some(command) = m.pointer("/run/command").and_then(Value::as_array) {
        let words: Vec<String> = command
            .iter()
            .filter_map(Value::as_str)
            .map(shell_word)
            .collect();
        fields.push(("command", words.join(" ")));
    }
    if let Some(ports) = m.get("ports").and_then(Value::as_array) {
        let ports: Vec<String> = ports
            .iter()
            .filter_map(|p| {
                let port = p.get("port")?.as_u64()?;
                let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("tcp");
                let publish = p.get("publish").and_then(Value::as_str).unwrap_or("none");
                Some(match publish {
                    "none" => format!("{port}/{protocol}"),
                    to => format!("{port}/{protocol} published to {to}"),
                })
            })
            .collect();
        if !ports.is_empty() {
            fields.push(("ports", ports.join(", ")));
        }
    }
    let resource = |name: &str, show: &dyn Fn(f64) -> String| -> Option<String> {
        let r = m.pointer(&format!("/resources/{name}"))?;
        let reserve = r.get("reserve").and_then(Value::as_f64).unwrap_or(0.0);
        let limit = r.get("limit").and_then(Value::as_f64);
        Some(match limit {
            Some(limit) => format!("{name} {} reserved, {} limit", show(reserve), show(limit)),
            None if reserve > 0.0 => format!("{name} {} reserved, no limit", show(reserve)),
            None => return None,
        })
    };
    let cores = |v: f64| format!("{v} cores");
    let bytes = |v: f64| size(v as u64);
    let resources: Vec<String> = [
        resource("cpu", &cores),
        resource("memory", &bytes),
        resource("storage", &bytes),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !resources.is_empty() {
        fields.push(("resources", resources.join("; ")));
    }
    fields
}

/// One line about a service's state: `running, pid 42, healthy`, with the reason when any.
pub fn status(s: &ServiceSummary) -> String {
    let mut text = s.state.clone();
    if let Some(pid) = s.pid {
        text.push_str(&format!(", pid {pid}"));
    }
    if s.health != "none" {
        text.push_str(&format!(", {}", s.health));
    }
    if let Some(reason) = &s.reason {
        text.push_str(&format!(" ({reason})"));
    }
    text
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
fn table(
    out: &mut impl Write,
    indent: &str,
    header: &[&str],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = indent.to_string();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `label  value` lines with the values aligned.
fn list(out: &mut impl Write, indent: &str, fields: &[(&str, String)]) -> io::Result<()> {
    let width = fields.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (label, value) in fields {
        writeln!(out, "{indent}{label:width$}  {value}")?;
    }
    Ok(())
}

/// A command word as a shell would need it, quoted only when it has to be.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A rate in decimal units, as links are sold: `0`, `800k`, `12.5M`, `1G` (bits/s).
pub fn bits(bits: u64) -> String {
    match bits {
        0 => "0".into(),
        b if b >= 1_000_000_000 => format!("{:.3}G", b as f64 / 1e9).replace(".000G", "G"),
        b if b >= 1_000_000 => format!("{:.1}M", b as f64 / 1e6).replace(".0M", "M"),
        b => format!("{}k", b.div_ceil(1000)),
    }
}

/// Bytes in binary units: `512 B`, `64 MiB`, `1.5 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A span in its two largest units: `45s`, `3m 12s`, `2h 5m`, `4d 1h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Unix milliseconds as RFC 3339 UTC to the second: `2024-05-01T12:00:00Z`.
pub fn time(ms: u64) -> String {
    let (date, secs) = utc(ms);
    format!("{date}T{secs}Z")
}

/// Unix milliseconds as RFC 3339 UTC to the millisecond: `2024-05-01T12:00:00.123Z`.
pub fn time_ms(ms: u64) -> String {
    let (date, secs) = utc(ms);
    format!("{date}T{secs}.{:03}Z", ms % 1000)
}

/// (`YYYY-MM-DD`, `HH:MM:SS`) of a Unix time in milliseconds.
fn utc(ms: u64) -> (String, String) {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `shg capacity`: one row per resource.
pub fn capacity(out: &mut impl Write, c: &api::CapacityView) -> io::Result<()> {
    let resources = [
        ("cpu", "cpu"),
        ("memory", "memory"),
        ("storage", "storage"),
        ("bandwidth down", "bandwidth_down"),
        ("bandwidth up", "bandwidth_up"),
    ];
    let show = |key: &str, v: &serde_json::Value| -> String {
        let n = v[key].as_u64().unwrap_or(0);
        match key {
            "cpu" => format!("{:.2} cores", n as f64 / 1000.0),
            "memory" | "storage" => size(n),
            _ => format!("{:.1} Mbit/s", n as f64 / 1e6),
        }
    };
    let header = [
        "RESOURCE",
        "CAPACITY",
        "RESERVE",
        "AVAILABLE",
        "RESERVED",
        "FREE",
    ];
    let rows: Vec<Vec<String>> = resources
        .iter()
        .map(|(label, key)| {
            vec![
                label.to_string(),
                show(key, &c.capacity),
                show(key, &c.system_reserve),
                show(key, &c.available),
                show(key, &c.reserved),
                show(key, &c.free),
            ]
        })
        .collect();
    table(out, "", &header, &rows)
}

/// `shg stats`: one row per service (used / reserved / limit), then the gateway's totals.
pub fn stats(out: &mut impl Write, s: &api::StatsView) -> io::Result<()> {
    let cores = |m: u64| format!("{:.2}", m as f64 / 1000.0);
    let opt = |v: Option<u64>, f: &dyn Fn(u64) -> String| v.map(f).unwrap_or_else(|| "-".into());
    let header = [
        "SERVICE",
        "STATE",
        "PRIO",
        "CPU USED/RES/LIM",
        "MEMORY USED/RES/LIM",
        "PIDS",
        "STORAGE USED/CAP",
        "DOWN/UP USED (RES)",
        "THROTTLED",
        "OOM",
    ];
    let rows: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.state.clone(),
                u.priority.to_string(),
                format!(
                    "{}/{}/{}",
                    opt(u.cpu.used, &cores),
                    cores(u.cpu.reserve),
                    opt(u.cpu.limit, &cores)
                ),
                format!(
                    "{}/{}/{}",
                    opt(u.memory.used, &size),
                    size(u.memory.reserve),
                    opt(u.memory.limit, &size)
                ),
                format!(
                    "{}/{}",
                    opt(u.pids.current, &|n| n.to_string()),
                    u.pids.limit
                ),
                format!("{}/{}", opt(u.storage.used, &size), size(u.storage.limit)),
                format!(
                    "{}/{} ({}/{})",
                    opt(u.bandwidth_down.used, &bits),
                    opt(u.bandwidth_up.used, &bits),
                    bits(u.bandwidth_down.reserve),
                    bits(u.bandwidth_up.reserve)
                ),
                match (u.cpu.throttled_periods, u.cpu.periods) {
                    (Some(t), Some(p)) if p > 0 => format!("{t}/{p}"),
                    _ => "-".into(),
                },
                u.memory.oom_kills.to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        writeln!(out, "no services installed")?;
    } else {
        table(out, "", &header, &rows)?;
        writeln!(
            out,
            "CPU in cores; THROTTLED = periods at the CPU limit / periods"
        )?;
    }
    let Some(g) = &s.gateway else {
        return Ok(());
    };
    writeln!(out)?;
    let rate = |b: u64| format!("{:.1} Mbit/s", b as f64 / 1e6);
    let cpu = |m: u64| format!("{} cores", cores(m));
    type Format<'a> = &'a dyn Fn(u64) -> String;
    let lines: [(&str, &api::ResourceTotals, Format); 5] = [
        ("cpu", &g.cpu, &cpu),
        ("memory", &g.memory, &size),
        ("storage", &g.storage, &size),
        ("bandwidth down", &g.bandwidth_down, &rate),
        ("bandwidth up", &g.bandwidth_up, &rate),
    ];
    let header = ["GATEWAY", "CAPACITY", "RESERVE", "RESERVED", "USED", "FREE"];
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|(label, t, f)| {
            vec![
                label.to_string(),
                f(t.capacity),
                f(t.system_reserve),
                f(t.reserved),
                opt(t.used, f),
                f(t.free),
            ]
        })
        .collect();
    table(out, "", &header, &rows)?;
    writeln!(
        out,
        "USED: cpu and memory of the whole host, storage of the services' volumes and logs, \
         bandwidth through the shaper since the last reading; FREE: left to reserve"
    )
}

/// `shg token list`.
pub fn tokens(out: &mut impl Write, tokens: &[api::TokenInfo]) -> io::Result<()> {
    if tokens.is_empty() {
        return writeln!(out, "no tokens; make one with `shg token create`");
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.realm.clone(),
                t.provider.clone().unwrap_or_else(|| "-".into()),
                t.kind.clone(),
                time(t.created_ms),
                t.revoked_ms.map(time).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        out,
        "",
        &["ID", "REALM", "PROVIDER", "CREATED", "REVOKED"],
        &rows,
    )
}

/// `shg audit`.
pub fn audit(out: &mut impl Write, entries: &[api::AuditEntry]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|a| {
            vec![
                time_ms(a.time_ms),
                a.principal.clone(),
                a.action.clone(),
                a.status.to_string(),
            ]
        })
        .collect();
    table(out, "", &["TIME", "WHO", "WHAT", "STATUS"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, reason: Option<&str>) -> ServiceSummary {
        ServiceSummary {
            name: name.into(),
            id: format!("acme/{name}"),
            provider: "acme".into(),
            version: "1.0.0".into(),
            state: if reason.is_some() {
                "crash-loop"
            } else {
                "running"
            }
            .into(),
            health: "healthy".into(),
            pid: reason.is_none().then_some(4242),
            desired: "running".into(),
            restarts: 3,
            priority: 50,
            exit_code: None,
            started_at_ms: Some(0),
            reason: reason.map(Into::into),
            signed_by: Some("0011223344556677".into()),
            unsigned: false,
            lan: Vec::new(),
        }
    }

    #[test]
    fn unsigned_services_are_flagged_in_the_row_and_below_the_table() {
        let mut s = summary("dev", None);
        s.signed_by = None;
        s.unsigned = true;
        let out = text(|o| services(o, &[summary("web", None), s]));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[2].contains("1.0.0 UNSIGNED"), "{out}");
        assert!(!lines[1].contains("UNSIGNED"), "{out}");
        assert!(
            lines[3].starts_with("WARNING: dev runs UNSIGNED code"),
            "{out}"
        );
    }

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(time_ms(1_714_564_800_123), "2024-05-01T12:00:00.123Z");
        assert_eq!(time(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn durations_show_two_units() {
        assert_eq!(duration(45_000), "45s");
        assert_eq!(duration(192_000), "3m 12s");
        assert_eq!(duration(7_500_000), "2h 5m");
        assert_eq!(duration(90_000_000), "1d 1h");
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(64 << 20), "64 MiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
    }

    #[test]
    fn rates_use_decimal_units() {
        assert_eq!(bits(0), "0");
        assert_eq!(bits(800_000), "800k");
        assert_eq!(bits(1), "1k");
        assert_eq!(bits(12_500_000), "12.5M");
        assert_eq!(bits(30_000_000), "30M");
        assert_eq!(bits(1_000_000_000), "1G");
    }

    #[test]
    fn ps_table_aligns_and_adds_reason_only_when_needed() {
        let plain = text(|o| services(o, &[summary("web", None)]));
        assert_eq!(
            plain,
            "NAME  PROVIDER  VERSION  STATE    HEALTH   PID   RESTARTS  PRIORITY\n\
             web   acme      1.0.0    running  healthy  4242  3         50\n"
        );
        let with_reason = text(|o| {
            services(
                o,
                &[
                    summary("camera", None),
                    summary("vod", Some("exited with code 1 five times in a minute")),
                ],
            )
        });
        let lines: Vec<&str> = with_reason.lines().collect();
        assert!(
            lines[0].ends_with("RESTARTS  PRIORITY  REASON"),
            "{with_reason}"
        );
        assert!(lines[1].ends_with("50"), "{with_reason}");
        assert!(
            lines[2].contains("  -     3         50        exited with code 1"),
            "{with_reason}"
        );
    }

    #[test]
    fn empty_lists_say_so() {
        assert!(text(|o| services(o, &[])).starts_with("no services installed"));
        assert_eq!(text(|o| events(o, &[])), "no events\n");
    }

    #[test]
    fn detail_shows_manifest_paths_and_events() {
        let d = ServiceDetail {
            summary: summary("web", None),
            description: "A small web server".into(),
            image_digest: "sha256:abc".into(),
            installed_at_ms: 1_714_564_800_000,
            manifest: serde_json::json!({
                "run": {"command": ["/bin/httpd", "-p", "8080", "it's"]},
                "ports": [{"port": 8080, "protocol": "tcp", "publish": "lan"}],
                "resources": {"memory": {"reserve": 67108864, "limit": 134217728},
                              "cpu": {"reserve": 0.0, "limit": null}},
            }),
            address: Some("10.77.0.2".into()),
            previous_version: None,
            source: None,
            paths: api::ServicePaths {
                rootfs: "/r".into(),
                data: "/d".into(),
                bundle: "/b".into(),
                logs: "/l".into(),
            },
            events: vec![Event {
                id: 1,
                time_ms: 1_714_564_800_000,
                service: Some("web".into()),
                kind: "installed".into(),
                message: "installed web 1.0.0".into(),
            }],
        };
        let out = text(|o| detail(o, &d, 3_600_000));
        assert!(out.starts_with("web 1.0.0 from acme\n"), "{out}");
        assert!(
            out.contains("  state        running (should be running)\n"),
            "{out}"
        );
        assert!(
            out.contains("  started      1970-01-01T00:00:00Z (up 1h 0m)\n"),
            "{out}"
        );
        assert!(
            out.contains("  command      /bin/httpd -p 8080 'it'\\''s'\n"),
            "{out}"
        );
        assert!(
            out.contains("  ports        8080/tcp published to lan\n"),
            "{out}"
        );
        assert!(
            out.contains("  resources    memory 64 MiB reserved, 128 MiB limit\n"),
            "{out}"
        );
        assert!(out.contains("paths\n  rootfs  /r\n"), "{out}");
        assert!(
            out.ends_with("recent events\n  TIME                  KIND       MESSAGE\n  2024-05-01T12:00:00Z  installed  installed web 1.0.0\n"),
            "{out}"
        );
    }
}
