//! Image allowances: what a service's layers take unpacked, counted from their tar headers
//! before anything is written, against the storage the service reserves or against its
//! provider's image allowance; and the unpack held to what was admitted.
//!
//! The rule (README, "Image layers"):
//!
//! - By default a service's image counts against its storage: the distinct layers of the
//!   release being installed or updated to must fit, together, in `resources.storage.reserve`
//!   — or in 16 MiB when it reserves less, the smallest data volume the gateway makes
//!   ([`runtime::volume::MIN_SIZE`]), so a service that reserves no storage still has room
//!   for a small image. A layer another service also uses counts for each of them: what a
//!   service reserves covers its whole image whatever else is installed, so no removal can
//!   leave a layer on the disk that no reservation covers. The data volume is sized from the
//!   same reservation and is not shrunk: the image is a second charge to it, not a share of
//!   the volume, so a service's disk is bounded by its volume plus, for each release it keeps
//!   (the current one and the previous one, for rollback), the allowance that release was
//!   admitted under.
//! - When the operator gives a provider an image allowance (`[providers.NAME] images` in
//!   `gateway.toml`), it replaces the storage rule for that provider's services: the layers
//!   of every release they keep (and of installs and updates under way), each distinct layer
//!   once however many of its services share it, must fit in it. A layer that services of
//!   two providers share counts for both. An update is charged for the new release beside the
//!   one it replaces, not for the older one the switch prunes.
//!
//! The layers are measured ([`image::measure_layer`]) after the package is opened and its
//! signature and catalog entry checked, with a ceiling, so a layer declaring gigabytes stops
//! the count at its first header. The check runs under the admission lock, before the
//! record is written: a refusal writes nothing. The unpack is held to the budget the check
//! admitted (`image::LayerStore::ensure_within`): an entry that would take the layers past
//! it is refused from its header, and a layer that writes more than its headers said is cut
//! off and refused, leaving nothing of it in the store.
//!
//! Each release records what its layers take in `sizes` beside `layers`, so a later check
//! counts them without reading them again; a release an older agent made is counted from the
//! disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use image::{Allowance, Budget, ImageError, LayerSize};
use manifest::Manifest;
use state::Phase;

use crate::{Agent, AgentError};

/// What an install or update was admitted: its package's layer sizes and the budget its
/// unpack is held to.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    pub sizes: Vec<LayerSize>,
    pub budget: Budget,
}

/// Installs and updates admitted whose release does not name its layers on disk yet.
#[derive(Default)]
pub(crate) struct Images {
    /// Service → its provider and the layers of the release being laid out.
    pending: Mutex<BTreeMap<String, (String, Vec<LayerSize>)>>,
}

impl Images {
    /// Counts `sizes` for `name` of `provider` until the guard is dropped: from an admission
    /// until the release's `layers` file says the same (or the change is given up), so two
    /// installs of one provider never both take the last of its allowance.
    pub(crate) fn hold(&self, name: &str, provider: &str, sizes: &[LayerSize]) -> Pending<'_> {
        self.lock()
            .insert(name.to_string(), (provider.to_string(), sizes.to_vec()));
        Pending {
            images: self,
            name: name.to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, Vec<LayerSize>)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An admitted release's layers, counted until it is laid out or given up.
pub(crate) struct Pending<'a> {
    images: &'a Images,
    name: String,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.images.lock().remove(&self.name);
    }
}

/// Measures `layers` from their tar headers, each distinct layer once, writing nothing.
/// Against the storage rule every layer counts, so each is counted up to what the ones before
/// left and the count ends with the first that passes it; against a provider's allowance a
/// layer the provider holds already is free, which only the check under the lock knows, so
/// each is counted up to the whole allowance.
pub(crate) fn measure(
    layers: &[image::Layer],
    allowance: &Allowance,
) -> Result<Vec<LayerSize>, ImageError> {
    let whole = allowance.bytes();
    let running = matches!(allowance, Allowance::Storage { .. });
    let mut seen = BTreeSet::new();
    let mut sizes = Vec::new();
    let mut total: u64 = 0;
    for layer in layers {
        if !seen.insert(layer.diff_id.as_str()) {
            continue;
        }
        let ceiling = if running {
            whole.saturating_sub(total)
        } else {
            whole
        };
        let size = image::measure_layer(layer, Some(ceiling))?;
        total = total.saturating_add(size.bytes);
        let stop = running && !size.complete;
        sizes.push(size);
        if stop {
            break;
        }
    }
    Ok(sizes)
}

/// The hex of a `sha256:HEX` diff_id (what `layers` and `sizes` files hold).
fn hex(diff_id: &str) -> &str {
    diff_id.strip_prefix("sha256:").unwrap_or(diff_id)
}

/// The `sizes` file of a release: `HEX BYTES` a line, for the layers whose count is complete.
pub(crate) fn sizes_text(sizes: &[LayerSize]) -> String {
    sizes
        .iter()
        .filter(|s| s.complete)
        .map(|s| format!("{} {}\n", hex(&s.diff_id), s.bytes))
        .collect()
}

/// What a release names: its layers (hex, from `layers`) and the sizes it recorded.
fn read_release(release: &Path, named: &mut BTreeSet<String>, known: &mut BTreeMap<String, u64>) {
    if let Ok(text) = std::fs::read_to_string(release.join("layers")) {
        named.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
    }
    if let Ok(text) = std::fs::read_to_string(release.join("sizes")) {
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            if let (Some(h), Some(Ok(bytes))) = (fields.next(), fields.next().map(str::parse)) {
                known.insert(h.to_string(), bytes);
            }
        }
    }
}

impl Agent {
    /// The allowance `m`'s layers count against: its provider's image allowance when the
    /// operator set one, else the storage it reserves (at least the smallest volume's).
    pub(crate) fn image_allowance(&self, m: &Manifest) -> Allowance {
        match self.settings.images.get(&m.provider) {
            Some(&allowance) => Allowance::Provider {
                provider: m.provider.clone(),
                allowance,
            },
            None => Allowance::Storage {
                service: m.name.clone(),
                reserve: m.resources.storage.reserve.max(runtime::volume::MIN_SIZE),
            },
        }
    }

    /// Measures `package`'s layers for `m`'s allowance, off the async threads.
    pub(crate) async fn measure_image(
        &self,
        m: &Manifest,
        package: &image::Package,
    ) -> Result<Vec<LayerSize>, AgentError> {
        let layers = package.layers.clone();
        let allowance = self.image_allowance(m);
        tokio::task::spawn_blocking(move || measure(&layers, &allowance))
            .await
            .map_err(AgentError::Task)?
            .map_err(AgentError::Image)
    }

    /// Checks that the measured layers fit in `m`'s allowance beside what its provider's
    /// services hold (the caller holds the admission lock), and returns the budget to hold the
    /// unpack to. On an update the service's current release counts (it is kept as the
    /// previous one) and its other releases do not (the switch prunes them). A refusal is
    /// journaled, when `journal`, as an admission refusal.
    pub(crate) fn admit_image(
        &self,
        m: &Manifest,
        sizes: &[LayerSize],
        journal: bool,
    ) -> Result<Admitted, AgentError> {
        let allowance = self.image_allowance(m);
        let held = match &allowance {
            Allowance::Storage { .. } => BTreeMap::new(),
            Allowance::Provider { provider, .. } => self.provider_layers(provider, &m.name)?,
        };
        let charged: u64 = held.values().sum();
        let check = Budget {
            bytes: allowance.bytes().saturating_sub(charged),
            allowance: allowance.clone(),
        };
        let keys: BTreeSet<String> = held.keys().cloned().collect();
        if let Err(source) = check.check(sizes, &keys) {
            let err = AgentError::ImageTooLarge {
                service: m.name.clone(),
                source,
            };
            if journal {
                // Names only the service, its provider and the package's own layers.
                let _ = self.store().record(
                    Some(&m.name),
                    state::Note::new("admission-refused", err.to_string()),
                );
            }
            return Err(err);
        }
        // The unpack writes only this package's layers, whichever the store lacks by then: a
        // layer held now may be collected meanwhile (its last other holder removed), and is
        // then written and charged here. So the budget is the allowance less what the
        // provider's other layers take, which the package's layers were checked to fit in.
        let own: BTreeSet<&str> = sizes.iter().map(|s| s.diff_id.as_str()).collect();
        let others: u64 = held
            .iter()
            .filter(|(id, _)| !own.contains(id.as_str()))
            .map(|(_, bytes)| bytes)
            .sum();
        let budget = Budget {
            bytes: allowance.bytes().saturating_sub(others),
            allowance,
        };
        Ok(Admitted {
            sizes: sizes.to_vec(),
            budget,
        })
    }

    /// The layers `provider`'s services hold (diff_id → bytes): those their kept releases
    /// name and those of installs and updates under way; of `except`, only its current
    /// release. Services being removed hold none.
    fn provider_layers(
        &self,
        provider: &str,
        except: &str,
    ) -> Result<BTreeMap<String, u64>, AgentError> {
        let mut named = BTreeSet::new();
        let mut known = BTreeMap::new();
        let records = self.store().list()?;
        for rec in records
            .iter()
            .filter(|r| r.provider == provider && r.phase != Phase::Removing)
        {
            let sl = self.layout.service(&rec.name);
            let releases: Vec<PathBuf> = if rec.name == except {
                vec![sl.release(&rec.image_digest)]
            } else {
                std::fs::read_dir(sl.releases())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .collect()
            };
            for release in releases {
                read_release(&release, &mut named, &mut known);
            }
        }
        for (name, (owner, sizes)) in self.images.lock().iter() {
            if owner != provider || name == except {
                continue;
            }
            for s in sizes {
                let h = hex(&s.diff_id).to_string();
                // A count stopped at the ceiling is a lower bound: a recorded one is exact.
                if s.complete || !known.contains_key(&h) {
                    known.insert(h.clone(), s.bytes);
                }
                named.insert(h);
            }
        }
        let mut held = BTreeMap::new();
        for h in named {
            let bytes = match known.get(&h) {
                Some(bytes) => *bytes,
                // Named by a release an older agent made: what it takes on the disk.
                None => self.stored_layer_bytes(&h),
            };
            held.insert(format!("sha256:{h}"), bytes);
        }
        Ok(held)
    }

    /// What the stored layer `hex` takes on the disk (0 when it cannot be read: a layer
    /// that is not there takes nothing).
    fn stored_layer_bytes(&self, hex: &str) -> u64 {
        let dir = self.layers.store.root().join("sha256").join(hex);
        match image::disk_usage(&dir) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!("cannot measure the stored layer {hex}: {e}");
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The image allowance on the fake host: what a refusal says and leaves, layers shared
    //! by a provider's services counted once, an update charged beside the release it
    //! replaces only, and the unpack held to its budget.

    use std::sync::Arc;
    use std::time::Duration;

    use image::{Allowance, Budget};
    use state::Phase;

    use crate::host::fake::Bench;
    use crate::{Agent, AgentError, InstallOptions, Principal};

    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;

    const SIXTEEN: &str = "[resources]\nstorage = { reserve = \"16MiB\" }\n";

    fn unsigned(start: bool) -> InstallOptions {
        InstallOptions {
            start,
            allow_unsigned: true,
            ..InstallOptions::default()
        }
    }

    fn journal(agent: &Agent, name: &str) -> Vec<String> {
        let events = agent.store().events(0, Some(name), 1000).unwrap();
        events.into_iter().map(|e| e.kind).collect()
    }

    async fn install(agent: &Arc<Agent>, package: &std::path::Path) -> Result<(), AgentError> {
        agent
            .install(&Principal::Operator, package, &unsigned(false))
            .await
            .map(|_| ())
    }

    /// The size the refusal says, in MiB: "unpacks to at least N MiB".
    fn said_mib(message: &str) -> u64 {
        let rest = message.split("unpacks to at least ").nth(1).unwrap();
        rest.split(' ').next().unwrap().parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_image_larger_than_the_storage_it_reserves_is_refused_before_anything_is_written() {
        let bench = Bench::new();
        let agent = bench.open();
        // 64 MiB of zeros in a few KiB of package.
        let package = bench.package_with_file("big", "1.0.0", SIXTEEN, "srv/zeros", 64 * MIB);
        assert!(std::fs::metadata(&package).unwrap().len() < MIB);

        let err = install(&agent, &package).await.unwrap_err();
        let AgentError::ImageTooLarge { service, source } = &err else {
            panic!("{err}");
        };
        assert_eq!(service, "big");
        let image::ImageError::OverAllowance {
            size,
            at_least,
            allowance,
            ..
        } = source
        else {
            panic!("{source}");
        };
        // Counted up to the first header past the reservation, which declares 64 MiB.
        assert!(*at_least && *size > 64 * MIB, "{size}");
        assert_eq!(
            allowance,
            &Allowance::Storage {
                service: "big".into(),
                reserve: 16 * MIB
            }
        );
        let message = err.to_string();
        assert!(
            message.starts_with("cannot admit `big`: layer sha256:"),
            "{message}"
        );
        assert_eq!(said_mib(&message), 64, "{message}");
        assert!(
            message.ends_with(
                "more than the 16 MiB of storage `big` reserves; raise `resources.storage` in \
                 shg-service.toml or ask the operator for a larger image allowance"
            ),
            "{message}"
        );

        assert!(agent.store().find("big").unwrap().is_none());
        let events = agent.store().events(0, Some("big"), 10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind.as_str(), events[0].message.as_str()),
            ("admission-refused", message.as_str())
        );
        assert!(bench.stored_layers().is_empty());
        assert_eq!(bench.partial_layers(), 0);
        assert!(!bench.state_dir().join("services/big").exists());
        assert!(!bench.state_dir().join("tmp/big.partial").exists());
        assert!(bench.mounts.log().is_empty(), "nothing unpacked or mounted");
        assert_eq!(agent.capacity().unwrap().reserved["storage"], 0);

        // The dry run says the same, and journals nothing.
        let err = agent
            .check_install(&Principal::Operator, &package, true, None)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), message);
        assert_eq!(journal(&agent, "big"), ["admission-refused"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_reserves_no_storage_has_room_for_a_small_image() {
        let bench = Bench::new();
        let agent = bench.open();
        let small = bench.package_with_file("small", "1.0.0", "", "srv/data", 8 * MIB);
        install(&agent, &small).await.unwrap();
        let big = bench.package_with_file("big", "1.0.0", "", "srv/data", 20 * MIB);
        let err = install(&agent, &big).await.unwrap_err().to_string();
        assert!(
            err.contains("more than the 16 MiB of storage `big` reserves"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_records_what_its_layers_take() {
        let bench = Bench::new();
        let agent = bench.open();
        let package = bench.package("web", "1.0.0", SIXTEEN);
        install(&agent, &package).await.unwrap();
        let rec = agent.store().get("web").unwrap();
        let release = bench
            .state_dir()
            .join("services/web/releases")
            .join(crate::layout::release_id(&rec.image_digest));
        let layers = std::fs::read_to_string(release.join("layers")).unwrap();
        let sizes = std::fs::read_to_string(release.join("sizes")).unwrap();
        // Its root, bin/ and bin/app: a block each.
        assert_eq!(sizes, format!("{} {}\n", layers.trim(), 3 * image::BLOCK));
    }

    /// `acme`'s services may hold 64 KiB of layers together.
    const ACME_64K: &str = "[providers.acme]\nimages = \"64KiB\"\n";

    #[tokio::test(start_paused = true)]
    async fn a_providers_layers_count_once_against_its_image_allowance() {
        let bench = Bench::with_config(ACME_64K);
        let agent = bench.open();
        // The same root file system: one 12 KiB layer, shared, counted once.
        for name in ["web", "api"] {
            install(&agent, &bench.package(name, "1.0.0", ""))
                .await
                .unwrap();
        }
        assert_eq!(bench.stored_layers().len(), 1);
        // A layer of its own of 56 KiB (srv/ and srv/blob besides the three blocks of the
        // others'): 12 + 56 is more than the 64 KiB allowance.
        let big = bench.package_with_file("big", "1.0.0", "", "srv/blob", 40 * KIB);
        let err = install(&agent, &big).await.unwrap_err();
        assert!(matches!(err, AgentError::ImageTooLarge { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(
                "unpacks to 56 KiB, more than the 52 KiB left of the 64 KiB image allowance of \
                 provider `acme`; ask the operator for a larger image allowance, or remove \
                 services of the provider whose layers no other service shares"
            ),
            "{message}"
        );
        assert_eq!(journal(&agent, "big"), ["admission-refused"]);
        assert_eq!(bench.stored_layers().len(), 1);

        // Removing one of the two services that share the layer frees nothing.
        agent.remove("web").await.unwrap();
        let err = install(&agent, &big).await.unwrap_err().to_string();
        assert!(err.contains("more than the 52 KiB left"), "{err}");
        agent.remove("api").await.unwrap();
        install(&agent, &big).await.unwrap();

        // Another provider's services are not charged to `acme`.
        let other = bench.package_with_file("other", "1.0.0", "", "srv/blob", 40 * KIB);
        let src = bench.dir.path().join("src-other-1.0.0/shg-service.toml");
        let text = std::fs::read_to_string(&src).unwrap();
        std::fs::write(&src, text.replace("\"acme\"", "\"beta\"")).unwrap();
        image::pack(src.parent().unwrap(), &other).unwrap();
        install(&agent, &other).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_install_under_way_counts_for_its_provider_until_its_release_names_its_layers() {
        let bench = Bench::with_config(ACME_64K);
        let agent = bench.open();
        let tar = bench.package_with_file("big", "1.0.0", "", "srv/blob", 40 * KIB);
        let staging = bench.dir.path().join("staging");
        let package = image::open(&tar, &staging).unwrap();
        let manifest = manifest::parse(&package.manifest_toml, "test").unwrap();
        let sizes = agent.measure_image(&manifest, &package).await.unwrap();
        // Admitted and not laid out yet: what another install of `acme` sees.
        let pending = agent.images.hold("big", "acme", &sizes);
        let web = bench.package_with_file("web", "1.0.0", "", "srv/blob", 20 * KIB);
        let err = install(&agent, &web).await.unwrap_err().to_string();
        assert!(
            err.contains("more than the 8 KiB left of the 64 KiB"),
            "{err}"
        );
        drop(pending);
        install(&agent, &web).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_is_charged_beside_the_release_it_replaces_not_the_one_pruned() {
        // Two 12 KiB releases fit in 28 KiB; three would not.
        let bench = Bench::with_config("[providers.acme]\nimages = \"28KiB\"\n");
        let agent = bench.open();
        install(&agent, &bench.package("web", "1.0.0", ""))
            .await
            .unwrap();
        let window = Duration::from_millis(10);
        for version in ["2.0.0", "3.0.0"] {
            let package = bench.package("web", version, "");
            agent
                .update(
                    &Principal::Operator,
                    "web",
                    &package,
                    None,
                    true,
                    window,
                    None,
                )
                .await
                .unwrap_or_else(|e| panic!("{version}: {e}"));
        }
        let rec = agent.store().get("web").unwrap();
        assert_eq!(rec.version, "3.0.0");
        assert_eq!(bench.stored_layers().len(), 2, "3.0.0 and 2.0.0, kept");

        // One more file makes 3.1.0's layer 16 KiB: with 3.0.0's, 28 KiB is not enough.
        let big = bench.package_with_file("web", "3.1.0", "", "srv/more", 1);
        let err = agent
            .update(&Principal::Operator, "web", &big, None, true, window, None)
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("unpacks to 20 KiB, more than the 16 KiB left of the 28 KiB"),
            "{message}"
        );
        // Refused before the record changed: still on 3.0.0, no update under way.
        let rec = agent.store().get("web").unwrap();
        assert_eq!(
            (rec.version.as_str(), rec.phase),
            ("3.0.0", Phase::Installed)
        );
        assert!(rec.next.is_none());
        assert_eq!(journal(&agent, "web").last().unwrap(), "admission-refused");
        assert_eq!(bench.stored_layers().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_whose_image_is_too_large_leaves_the_service_running_as_it_was() {
        let bench = Bench::new();
        let agent = bench.open();
        agent
            .install(
                &Principal::Operator,
                &bench.package("web", "1.0.0", SIXTEEN),
                &unsigned(true),
            )
            .await
            .unwrap();
        let pid = bench.containers.pid("web").unwrap();
        let layers = bench.stored_layers();
        let big = bench.package_with_file("web", "2.0.0", SIXTEEN, "srv/zeros", 256 * MIB);
        let err = agent
            .update(
                &Principal::Operator,
                "web",
                &big,
                None,
                true,
                Duration::from_secs(1),
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::ImageTooLarge { .. }), "{err}");
        assert!(said_mib(&err.to_string()) >= 256, "{err}");
        let rec = agent.store().get("web").unwrap();
        assert_eq!(
            (rec.version.as_str(), rec.phase),
            ("1.0.0", Phase::Installed)
        );
        assert_eq!(rec.pid, Some(pid));
        assert!(bench.containers.signals().is_empty());
        assert_eq!(bench.stored_layers(), layers);
        assert_eq!(bench.partial_layers(), 0);
        let releases = bench.state_dir().join("services/web/releases");
        assert_eq!(std::fs::read_dir(releases).unwrap().count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_unpack_is_held_to_what_was_admitted() {
        let bench = Bench::new();
        let agent = bench.open();
        let tar = bench.package_with_file("web", "1.0.0", SIXTEEN, "srv/data", 64 * KIB);
        let staging = bench.dir.path().join("staging");
        let package = image::open(&tar, &staging).unwrap();
        let manifest = manifest::parse(&package.manifest_toml, "test").unwrap();
        let sizes = agent.measure_image(&manifest, &package).await.unwrap();
        // A budget a block short of what the headers say: the layer is cut off at the entry
        // that passes it, and nothing of it stays in the store.
        let admitted = super::Admitted {
            budget: Budget {
                bytes: sizes[0].bytes - image::BLOCK,
                allowance: agent.image_allowance(&manifest),
            },
            sizes,
        };
        let release = bench.dir.path().join("release");
        let err = agent
            .unpack_release(&manifest, &package, &release, &admitted)
            .unwrap_err();
        assert!(matches!(err, AgentError::ImageTooLarge { .. }), "{err}");
        assert!(bench.stored_layers().is_empty());
        assert_eq!(bench.partial_layers(), 0);
        assert!(!release.join("layers").exists());
    }
}
