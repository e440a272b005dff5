//! The gateway's own shelf of packages, `STATE/samples` (where `shg demo` builds its samples):
//! what the console offers to install, each caller seeing only what it may install.

use std::path::PathBuf;

use crate::auth::{check_gateway, GatewayAction, Principal};
use crate::{Agent, AgentError};

impl Agent {
    fn shelf_dir(&self) -> PathBuf {
        self.state_dir().join("samples")
    }

    /// The packages on the shelf `who` may install (for a provider, its own only), by name.
    pub fn shelf(&self, who: &Principal) -> Result<Vec<api::ShelfEntry>, AgentError> {
        check_gateway(who, GatewayAction::Install)?;
        let mut entries: Vec<api::ShelfEntry> = std::fs::read_dir(self.shelf_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tar"))
            .filter_map(|e| {
                let staging = self
                    .layout
                    .tmp()
                    .join(format!("catalog-{}", crate::layout::unique()));
                let opened = image::open(&e.path(), &staging);
                let _ = std::fs::remove_dir_all(&staging);
                let m = manifest::parse(&opened.ok()?.manifest_toml, "shg-service.toml").ok()?;
                who.sees(&m.provider).then(|| api::ShelfEntry {
                    file: e.file_name().to_string_lossy().into_owned(),
                    name: m.name,
                    provider: m.provider,
                    version: m.version,
                    description: m.description,
                    size: e.metadata().map(|m| m.len()).unwrap_or(0),
                })
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// The path of shelf package `file`, if the shelf lists it for `who`: no path from a
    /// request reaches the file system otherwise.
    pub fn shelf_package(&self, who: &Principal, file: &str) -> Result<PathBuf, AgentError> {
        let listed = self.shelf(who)?;
        let Some(entry) = listed.into_iter().find(|e| e.file == file) else {
            return Err(AgentError::NotFound(format!("catalog package {file}")));
        };
        Ok(self.shelf_dir().join(&entry.file))
    }
}
