//! Facts about host processes: whether a PID is still the process we started.

use std::path::Path;

/// The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), which
/// tells a live process from a later one that reused its PID.
pub fn start_time(proc_root: &Path, pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3 (state); the start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive and not a zombie.
pub fn is_alive(proc_root: &Path, pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) else {
        return false;
    };
    let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_a_start_time() {
        let pid = std::process::id() as i32;
        assert!(start_time(Path::new("/proc"), pid).is_some());
        assert!(is_alive(Path::new("/proc"), pid));
    }

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("42")).unwrap();
        let fields: Vec<String> = (3..=30).map(|i| i.to_string()).collect();
        let line = format!("42 (a) b (c) S {}", fields[1..].join(" "));
        std::fs::write(dir.path().join("42/stat"), line).unwrap();
        assert_eq!(start_time(dir.path(), 42), Some(22));
        assert!(is_alive(dir.path(), 42));
    }
}
