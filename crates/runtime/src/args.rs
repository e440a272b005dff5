//! The helpers' internal arguments (`shg-runtime`, `shg-init`): `--flag value` pairs,
//! positionals, and the command after `--`. Written by the agent only, so no more than that.

use std::collections::HashMap;
use std::path::PathBuf;

/// Parsed arguments.
pub struct Args {
    pub flags: HashMap<String, String>,
    pub positional: Vec<String>,
    pub command: Vec<String>,
}

impl Args {
    pub fn parse(args: &[String]) -> Args {
        let mut parsed = Args {
            flags: HashMap::new(),
            positional: Vec::new(),
            command: Vec::new(),
        };
        let mut i = 0;
        while i < args.len() {
            if args[i] == "--" {
                parsed.command = args[i + 1..].to_vec();
                break;
            }
            if let Some(name) = args[i].strip_prefix("--") {
                parsed.flags.insert(
                    name.to_string(),
                    args.get(i + 1).cloned().unwrap_or_default(),
                );
                i += 2;
            } else {
                parsed.positional.push(args[i].clone());
                i += 1;
            }
        }
        parsed
    }

    /// The number given for `key`, or `default`.
    pub fn num(&self, key: &str, default: u64) -> u64 {
        self.flags
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    pub fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.flags.get(key).cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_positionals_and_the_command_after_the_separator() {
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let a = Args::parse(&words("web --uid 1000 --gid 7 -- /bin/sh -c --x"));
        assert_eq!(a.positional, ["web"]);
        assert_eq!(
            (a.num("uid", 0), a.num("gid", 0), a.num("pids", 9)),
            (1000, 7, 9)
        );
        assert_eq!(a.command, ["/bin/sh", "-c", "--x"]);
    }
}
