//! A manifest given beside a standard OCI image: what the image's own config says about running
//! it (`Entrypoint`, `Cmd`, `Env`, `User`, `WorkingDir`, `ExposedPorts`) fills in whatever the
//! manifest leaves out, so a provider writes only what SHG needs beyond the image.
//!
//! [`complete`] writes the result as manifest text: that text is what a gateway stores and
//! reads at every start, so a service from a standard image is, from then on, a service like
//! any other, and its stored manifest alone says how it runs.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::{Table, Value};

use crate::{parse_user, ManifestError};

/// The `config` object of an OCI image config, as docker, podman and buildah write it: the
/// fields SHG reads. Everything in it is a default the manifest overrides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ImageDefaults {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `NAME=VALUE` entries.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// `uid`, `uid:gid`, or names (which SHG does not look up).
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "WorkingDir", default)]
    pub workdir: Option<String>,
    /// `PORT/tcp`, `PORT/udp` or `PORT`, each mapped to `{}`.
    #[serde(rename = "ExposedPorts", default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

impl ImageDefaults {
    /// The defaults in a whole image config (its `config` object); none when it has none.
    /// The error says which field has the wrong shape.
    pub fn from_image_config(config: &serde_json::Value) -> Result<ImageDefaults, String> {
        match config.get("config") {
            None | Some(serde_json::Value::Null) => Ok(ImageDefaults::default()),
            Some(c) => serde_json::from_value(c.clone())
                .map_err(|e| format!("the image config's `config` object is malformed: {e}")),
        }
    }
}

/// Fills in what the manifest `text` leaves out of `[run]` from the image's config, and
/// returns the manifest to store (`text` itself when nothing was missing):
///
/// - `command`: the image's `Entrypoint` followed by its `Cmd` (a manifest's `command`
///   replaces both); refused when neither gives one, or when it is not an absolute path;
/// - `env`: each of the image's `Env` the manifest does not set;
/// - `user`: the image's numeric `User` (`1000` is 1000:1000, as in a manifest);
/// - `workdir`: the image's `WorkingDir`;
/// - `[[ports]]`, when the manifest has none: the image's `ExposedPorts`, as hints only —
///   `publish = "none"`, so nothing is reachable from outside until the manifest says so.
///
/// Errors name `origin` and the field, like [`crate::parse`]; the result still has to pass
/// [`crate::parse`].
pub fn complete(text: &str, origin: &str, image: &ImageDefaults) -> Result<String, ManifestError> {
    let mut table = crate::table_of(text, origin)?;
    let invalid = |field: &str, reason: String| ManifestError::Invalid {
        origin: origin.to_string(),
        field: field.to_string(),
        reason,
    };
    let mut run = match table.get("run") {
        None => Table::new(),
        Some(Value::Table(t)) => t.clone(),
        // Not a table: `parse` refuses it with the usual words.
        Some(_) => return Ok(text.to_string()),
    };
    let before = run.clone();

    if !run.contains_key("command") {
        let command: Vec<String> = image
            .entrypoint
            .iter()
            .chain(&image.cmd)
            .flatten()
            .cloned()
            .collect();
        match command.first() {
            None => {
                return Err(invalid(
                    "run.command",
                    "missing, and the image config names no Entrypoint or Cmd to run; add \
                     `command = [\"/path/to/program\"]` to [run]"
                        .into(),
                ))
            }
            Some(program) if !program.starts_with('/') => {
                return Err(invalid(
                    "run.command",
                    format!(
                        "missing, and the image's Entrypoint and Cmd start with {program:?}, \
                         which is not an absolute path (SHG does not search PATH); add \
                         `command = [\"/absolute/path/of/{program}\", …]` to [run]"
                    ),
                ))
            }
            Some(_) => {
                let list = command.into_iter().map(Value::String).collect();
                run.insert("command".into(), Value::Array(list));
            }
        }
    }

    let image_env: Vec<(&str, &str)> = image
        .env
        .iter()
        .flatten()
        .filter_map(|entry| entry.split_once('='))
        // A name a manifest could not set either (a shell cannot read it) is left out
        // rather than refusing the image for it.
        .filter(|(name, _)| crate::valid_env_name(name))
        .collect();
    if !image_env.is_empty() {
        // Not a table: left for `parse` to refuse.
        if let Value::Table(env) = run
            .entry("env")
            .or_insert_with(|| Value::Table(Table::new()))
        {
            for (name, value) in image_env {
                env.entry(name.to_string())
                    .or_insert_with(|| Value::String(value.to_string()));
            }
        }
    }

    if let Some(user) = image.user.as_deref().filter(|u| !u.is_empty()) {
        if !run.contains_key("user") {
            parse_user(user).map_err(|_| {
                invalid(
                    "run.user",
                    format!(
                        "missing, and the image config's User {user:?} is not numeric; SHG does \
                         not look names up in the image: add `user = \"UID:GID\"` to [run]"
                    ),
                )
            })?;
            run.insert("user".into(), Value::String(user.to_string()));
        }
    }

    if let Some(dir) = image.workdir.as_deref().filter(|d| !d.is_empty()) {
        if !run.contains_key("workdir") {
            if !dir.starts_with('/') {
                return Err(invalid(
                    "run.workdir",
                    format!(
                        "missing, and the image config's WorkingDir {dir:?} is not an absolute \
                         path; add `workdir = \"/absolute/path\"` to [run]"
                    ),
                ));
            }
            run.insert("workdir".into(), Value::String(dir.to_string()));
        }
    }

    let mut changed = run != before;
    if changed {
        table.insert("run".into(), Value::Table(run));
    }
    if !table.contains_key("ports") {
        let hints: Vec<Value> = image
            .exposed_ports
            .iter()
            .flatten()
            .filter_map(|(key, _)| exposed_port(key))
            .map(|(port, protocol)| {
                let mut t = Table::new();
                t.insert("port".into(), Value::Integer(port.into()));
                t.insert("protocol".into(), Value::String(protocol.into()));
                t.insert("publish".into(), Value::String("none".into()));
                Value::Table(t)
            })
            .collect();
        if !hints.is_empty() {
            table.insert("ports".into(), Value::Array(hints));
            changed = true;
        }
    }
    if !changed {
        return Ok(text.to_string());
    }
    toml::to_string(&table).map_err(|e| {
        invalid(
            "run",
            format!("cannot be written out with the image's defaults: {e}"),
        )
    })
}

/// `8080/tcp`, `53/udp`, `8080` as (port, protocol); other protocols and ports are no hint.
fn exposed_port(key: &str) -> Option<(u16, &'static str)> {
    let (port, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
    let protocol = match protocol {
        "tcp" => "tcp",
        "udp" => "udp",
        _ => return None,
    };
    let port: u16 = port.parse().ok()?;
    (port != 0).then_some((port, protocol))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, Protocol, Publish, User};

    const HEAD: &str = "name = \"web\"\nversion = \"1.0.0\"\nprovider = \"acme\"\n";

    fn buildah() -> ImageDefaults {
        let config = serde_json::json!({
            "architecture": "amd64",
            "config": {
                "User": "1000:1000",
                "ExposedPorts": { "8080/tcp": {}, "53/udp": {}, "9/sctp": {} },
                "Env": ["PATH=/usr/bin:/bin", "GREETING=hello", "=odd", "1BAD=x", "NOVALUE"],
                "Entrypoint": ["/bin/busybox"],
                "Cmd": ["sh", "-c", "echo hi"],
                "WorkingDir": "/srv",
                "Labels": { "io.buildah.version": "1.28.2" }
            }
        });
        ImageDefaults::from_image_config(&config).unwrap()
    }

    fn completed(text: &str, image: &ImageDefaults) -> crate::Manifest {
        let out = complete(text, "shg-service.toml", image).unwrap();
        parse(&out, "shg-service.toml").unwrap_or_else(|e| panic!("{e}\nin:\n{out}"))
    }

    #[test]
    fn a_manifest_without_run_takes_the_whole_run_from_the_image() {
        let m = completed(HEAD, &buildah());
        assert_eq!(m.run.command, ["/bin/busybox", "sh", "-c", "echo hi"]);
        assert_eq!(m.run.env["GREETING"], "hello");
        assert_eq!(m.run.env["PATH"], "/usr/bin:/bin");
        assert_eq!(m.run.env.len(), 2, "{:?}", m.run.env);
        assert_eq!(
            m.run.user,
            Some(User {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(m.run.workdir.as_deref(), Some("/srv"));
        let ports: Vec<_> = m
            .ports
            .iter()
            .map(|p| (p.port, p.protocol, p.publish))
            .collect();
        assert_eq!(
            ports,
            [
                (53, Protocol::Udp, Publish::None),
                (8080, Protocol::Tcp, Publish::None)
            ]
        );
    }

    #[test]
    fn what_the_manifest_says_wins_field_by_field() {
        let text = format!(
            "{HEAD}[run]\ncommand = [\"/bin/busybox\", \"httpd\", \"-f\"]\nuser = \"2000\"\n\
             workdir = \"/data\"\nenv = {{ GREETING = \"hi\", MODE = \"prod\" }}\n\
             [[ports]]\nport = 80\npublish = \"lan\"\n"
        );
        let m = completed(&text, &buildah());
        assert_eq!(m.run.command, ["/bin/busybox", "httpd", "-f"]);
        assert_eq!(
            m.run.user,
            Some(User {
                uid: 2000,
                gid: 2000
            })
        );
        assert_eq!(m.run.workdir.as_deref(), Some("/data"));
        assert_eq!(m.run.env["GREETING"], "hi");
        assert_eq!(m.run.env["MODE"], "prod");
        assert_eq!(m.run.env["PATH"], "/usr/bin:/bin");
        assert_eq!(m.ports.len(), 1, "the image's ports are hints only");
        assert_eq!(m.ports[0].publish, Publish::Lan);
    }

    #[test]
    fn nothing_missing_keeps_the_text_as_written() {
        let text = format!("{HEAD}# a comment\n[run]\ncommand = [\"/bin/x\"]\n");
        let out = complete(&text, "m", &ImageDefaults::default()).unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn a_command_is_needed_from_one_side_or_the_other() {
        let err = complete(HEAD, "shg-service.toml", &ImageDefaults::default()).unwrap_err();
        assert_eq!(err.field(), Some("run.command"));
        let text = err.to_string();
        assert!(
            text.starts_with("shg-service.toml: run.command: missing"),
            "{text}"
        );
        assert!(text.contains("no Entrypoint or Cmd"), "{text}");
        assert!(text.contains("add `command ="), "{text}");

        let relative = ImageDefaults {
            cmd: Some(vec!["nginx".into(), "-g".into()]),
            ..ImageDefaults::default()
        };
        let err = complete(HEAD, "m", &relative).unwrap_err().to_string();
        assert!(err.contains("\"nginx\"") && err.contains("PATH"), "{err}");
        // Cmd alone is a whole command.
        let cmd_only = ImageDefaults {
            cmd: Some(vec!["/bin/app".into(), "--serve".into()]),
            ..ImageDefaults::default()
        };
        assert_eq!(
            completed(HEAD, &cmd_only).run.command,
            ["/bin/app", "--serve"]
        );
    }

    #[test]
    fn a_user_name_or_a_relative_workdir_asks_the_manifest_to_say() {
        let named = ImageDefaults {
            cmd: Some(vec!["/bin/app".into()]),
            user: Some("nobody".into()),
            ..ImageDefaults::default()
        };
        let err = complete(HEAD, "m", &named).unwrap_err();
        assert_eq!(err.field(), Some("run.user"));
        assert!(
            err.to_string().contains("\"nobody\" is not numeric"),
            "{err}"
        );
        // Said in the manifest, the image's name does not matter.
        let text = format!("{HEAD}[run]\nuser = \"65534\"\n");
        assert_eq!(completed(&text, &named).run.user.unwrap().uid, 65534);

        let relative = ImageDefaults {
            cmd: Some(vec!["/bin/app".into()]),
            workdir: Some("srv".into()),
            ..ImageDefaults::default()
        };
        let err = complete(HEAD, "m", &relative).unwrap_err();
        assert_eq!(err.field(), Some("run.workdir"));
    }

    #[test]
    fn the_rest_of_the_manifest_is_checked_as_ever() {
        let text = format!("{HEAD}[run]\nstop_timeout = \"5s\"\n[resources]\nmemory = {{ reserve = \"32MiB\", limit = \"16MiB\" }}\n");
        let out = complete(&text, "m", &buildah()).unwrap();
        let err = parse(&out, "m").unwrap_err();
        assert_eq!(err.field(), Some("resources.memory.limit"), "{err}");
        let err = complete("name = ", "m", &buildah()).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn a_malformed_image_config_is_named() {
        let bad = serde_json::json!({ "config": { "Entrypoint": "/bin/app" } });
        let err = ImageDefaults::from_image_config(&bad).unwrap_err();
        assert!(err.contains("malformed"), "{err}");
        let none = serde_json::json!({ "config": null });
        assert_eq!(
            ImageDefaults::from_image_config(&none).unwrap(),
            ImageDefaults::default()
        );
    }
}
