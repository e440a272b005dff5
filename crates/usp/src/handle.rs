//! One record from the broker: checked, decoded, answered. Bad input of any kind — a record
//! that does not parse, a message too large, an unknown path, a wrong type — gets a USP error
//! and changes nothing; the agent keeps serving.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use agent::{AgentError, InstallOptions, Principal, ServiceAction};
use rusp_lib::usp::mod_Body::OneOfmsg_body;
use rusp_lib::usp::mod_Request::OneOfreq_type;
use rusp_lib::usp::{Add, Body, Delete, Get, GetInstances, GetSupportedDM, Msg, Operate, Set};
use rusp_lib::usp_builder::{
    AddOperationStatus, AddRespBuilder, CreatedObjectResultsBuilder, CurrInstanceBuilder,
    DeleteRespBuilder, DeletedObjectResultsBuilder, ErrorBuilder, GSDMCommandResult,
    GSDMEventResult, GSDMParamResult, GSDMReqObjectResultBuilder, GSDMSupportedObjectResultBuilder,
    GetInstancesRespBuilder, GetInstancesRespReqPathResultBuilder, GetReqPathResultBuilder,
    GetRespBuilder, GetSupportedDMRespBuilder, GetSupportedProtocolRespBuilder, MsgBuilder,
    NotifyBuilder, OperateRespBuilder, OperateRespResultBuilder, ResolvedPathResultBuilder,
    SetOperationStatus, SetOperationSuccessBuilder, SetRespBuilder, UpdatedObjectResultsBuilder,
};
use rusp_lib::usp_record::mod_Record::OneOfrecord_type;

use crate::book::{Book, SUBSCRIPTIONS};
use crate::model::{self, UspError, EXEC_ENV, SM};
use crate::schema::{self, Type};
use crate::Usp;

type Reply = Result<Body, UspError>;

impl Usp {
    /// Handles one MQTT payload: a USP record for this agent from its controller.
    pub(crate) async fn on_record(self: &Arc<Self>, bytes: &[u8]) {
        let controller = self.cfg.controller_id.clone();
        let record = match rusp_lib::usp_decoder::try_decode_record(bytes) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!("USP: dropped a record that does not parse: {e}");
                let err = UspError::new(
                    7100,
                    format!("the record does not parse as a USP Record: {e}"),
                );
                self.reply(&controller, "1.3", "", Err(err));
                return;
            }
        };
        if record.to_id != self.cfg.endpoint_id {
            tracing::debug!(to = %record.to_id, "USP: a record for another endpoint, ignored");
            return;
        }
        if record.from_id != controller {
            tracing::warn!(
                from = %record.from_id,
                "USP: dropped a record from an endpoint that is not this gateway's controller"
            );
            self.audit(&format!("USP record from `{}`", record.from_id), 403);
            return;
        }
        let version = match record.version.as_str() {
            v @ ("1.0" | "1.1" | "1.2" | "1.3" | "1.4") => v.to_string(),
            _ => "1.3".to_string(),
        };
        let payload = match record.record_type {
            OneOfrecord_type::no_session_context(p) => p.payload,
            OneOfrecord_type::session_context(_) => {
                let err = UspError::new(
                    7106,
                    "session context records are not supported; send no-session-context records",
                );
                self.reply(&controller, &version, "", Err(err));
                return;
            }
            // Connect and disconnect records need no answer.
            _ => return,
        };
        if payload.len() > crate::MAX_MESSAGE {
            let err = UspError::new(
                7000,
                format!(
                    "a message of {} bytes is larger than the {} bytes this agent reads; split the request",
                    payload.len(),
                    crate::MAX_MESSAGE
                ),
            );
            self.reply(&controller, &version, "", Err(err));
            return;
        }
        let msg = match rusp_lib::usp_decoder::try_decode_msg(&payload) {
            Ok(msg) => msg,
            Err(e) => {
                let err = UspError::new(
                    7000,
                    format!("the payload does not parse as a USP Msg: {e}"),
                );
                self.reply(&controller, &version, "", Err(err));
                return;
            }
        };
        let id = msg.msg_id().to_string();
        if let Some(reply) = self.dispatch(&id, msg).await {
            self.reply(&controller, &version, &id, reply);
        }
    }

    fn reply(&self, to: &str, version: &str, msg_id: &str, reply: Reply) {
        let body = match reply {
            Ok(body) => Ok(body),
            Err(e) => ErrorBuilder::new().set_err(e.code, Some(e.message)).build(),
        };
        let msg = body.and_then(|b| {
            MsgBuilder::new()
                .with_msg_id(msg_id.to_string())
                .with_body(b)
                .build()
        });
        match msg {
            Ok(msg) => self.send(to, version, &msg),
            Err(e) => tracing::error!("cannot build a USP response: {e}"),
        }
    }

    /// The answer to one message, or `None` for a message that takes none (a response).
    async fn dispatch(self: &Arc<Self>, msg_id: &str, msg: Msg) -> Option<Reply> {
        let Some(body) = msg.body else {
            return Some(Err(UspError::new(7000, "the message has no body")));
        };
        let request = match body.msg_body {
            OneOfmsg_body::request(r) => r,
            // A NotifyResp, or an error about a notification: nothing to answer.
            OneOfmsg_body::response(_) | OneOfmsg_body::error(_) => return None,
            OneOfmsg_body::None => {
                return Some(Err(UspError::new(7000, "the message body is empty")))
            }
        };
        let _permit = self.busy.acquire().await.ok()?;
        Some(match request.req_type {
            OneOfreq_type::get(g) => self.get(g),
            OneOfreq_type::get_instances(g) => self.get_instances(g),
            OneOfreq_type::get_supported_dm(g) => get_supported_dm(g),
            OneOfreq_type::get_supported_protocol(_) => {
                GetSupportedProtocolRespBuilder::new(crate::VERSIONS.into())
                    .build()
                    .map_err(internal)
            }
            OneOfreq_type::add(a) => self.add(a),
            OneOfreq_type::set(s) => self.set(s),
            OneOfreq_type::delete(d) => self.delete(d),
            OneOfreq_type::operate(o) => return self.operate(msg_id, o).await,
            OneOfreq_type::notify(_) | OneOfreq_type::register(_) | OneOfreq_type::deregister(_) => {
                Err(UspError::new(
                    7001,
                    "this agent takes Get, GetInstances, GetSupportedDM, GetSupportedProtocol, Add, Set, Delete and Operate",
                ))
            }
            OneOfreq_type::None => Err(UspError::new(7000, "the request names no operation")),
        })
    }

    fn snapshot_or_error(&self) -> Result<model::Snapshot, UspError> {
        self.snapshot()
            .map_err(|e| UspError::new(7003, format!("the gateway cannot read its state: {e}")))
    }

    fn get(&self, g: Get) -> Reply {
        let snap = self.snapshot_or_error()?;
        let results = g
            .param_paths
            .into_iter()
            .map(|path| {
                let r = GetReqPathResultBuilder::new(path.clone());
                match snap.get(&path, g.max_depth) {
                    Ok(found) => r.with_res_path_results(
                        found
                            .into_iter()
                            .map(|(o, params)| {
                                ResolvedPathResultBuilder::new(o).with_result_params(params)
                            })
                            .collect(),
                    ),
                    Err(e) => r.set_err(e.code, Some(e.message)),
                }
            })
            .collect();
        GetRespBuilder::new()
            .with_req_path_results(results)
            .build()
            .map_err(internal)
    }

    fn get_instances(&self, g: GetInstances) -> Reply {
        let snap = self.snapshot_or_error()?;
        let results = g
            .obj_paths
            .into_iter()
            .map(|path| {
                let r = GetInstancesRespReqPathResultBuilder::new(path.clone());
                match snap.instances(&path, g.first_level_only) {
                    Ok(found) => r.with_curr_insts(
                        found
                            .into_iter()
                            .map(|(o, keys)| CurrInstanceBuilder::new(o).with_unique_keys(keys))
                            .collect(),
                    ),
                    Err(e) => r.set_err(e.code, Some(e.message)),
                }
            })
            .collect();
        GetInstancesRespBuilder::new()
            .with_req_path_results(results)
            .build()
            .map_err(internal)
    }

    /// `Add`: only subscriptions may be made. Without `allow_partial`, one refused object
    /// refuses the whole request and none is made.
    fn add(&self, a: Add) -> Reply {
        let mut book = self.book();
        let before = book.subscriptions.len();
        let now = now();
        let mut results = Vec::new();
        for obj in a.create_objs {
            let made = if obj.obj_path != SUBSCRIPTIONS {
                Err(not_creatable(&obj.obj_path))
            } else {
                let settings: Vec<(String, String)> = obj
                    .param_settings
                    .iter()
                    .map(|p| (p.param.clone(), p.value.clone()))
                    .collect();
                book.add_subscription(&settings, now.clone())
                    .map(|s| (s.path(), s.alias.clone(), s.id.clone()))
            };
            match made {
                Ok((path, alias, id)) => {
                    let keys =
                        HashMap::from([("Alias".to_string(), alias), ("ID".to_string(), id)]);
                    results.push(CreatedObjectResultsBuilder::new(
                        obj.obj_path,
                        AddOperationStatus::new().set_success(path, vec![], keys),
                    ));
                }
                Err(e) if !a.allow_partial => {
                    book.subscriptions.truncate(before);
                    self.audit("USP Add", 400);
                    return Err(UspError::new(
                        e.code,
                        format!("{}: {}", obj.obj_path, e.message),
                    ));
                }
                Err(e) => results.push(CreatedObjectResultsBuilder::new(
                    obj.obj_path,
                    AddOperationStatus::new().set_failure(e.code, Some(e.message)),
                )),
            }
        }
        if book.subscriptions.len() != before {
            book.save();
            self.wake.notify_one();
        }
        drop(book);
        self.audit("USP Add", 200);
        AddRespBuilder::new()
            .with_created_obj_results(results)
            .build()
            .map_err(internal)
    }

    /// `Set`: only subscription parameters are writable. Every change of a request is checked
    /// before any is kept.
    fn set(&self, s: Set) -> Reply {
        let mut book = self.book();
        let mut changed: Vec<crate::book::Subscription> = Vec::new();
        let mut results = Vec::new();
        for obj in s.update_objs {
            let outcome = update_subscriptions(&book, &obj, &mut changed);
            match outcome {
                Ok(done) => results.push(UpdatedObjectResultsBuilder::new(
                    obj.obj_path,
                    SetOperationStatus::new().set_success(done),
                )),
                Err(e) if !s.allow_partial => {
                    self.audit("USP Set", 400);
                    return Err(UspError::new(
                        e.code,
                        format!("{}: {}", obj.obj_path, e.message),
                    ));
                }
                Err(e) => results.push(UpdatedObjectResultsBuilder::new(
                    obj.obj_path,
                    SetOperationStatus::new().set_failure(e.code, Some(e.message), vec![]),
                )),
            }
        }
        for sub in changed {
            if let Some(kept) = book
                .subscriptions
                .iter_mut()
                .find(|k| k.instance == sub.instance)
            {
                *kept = sub;
            }
        }
        book.save();
        drop(book);
        self.wake.notify_one();
        self.audit("USP Set", 200);
        SetRespBuilder::new()
            .with_updated_obj_results(results)
            .build()
            .map_err(internal)
    }

    /// `Delete`: only subscriptions may be deleted; a path that matches none deletes nothing
    /// and succeeds.
    fn delete(&self, d: Delete) -> Reply {
        let mut book = self.book();
        let mut results = Vec::new();
        let mut doomed = Vec::new();
        for path in d.obj_paths {
            let outcome = (|| {
                model::check_syntax(&path)?;
                if !path.starts_with(SUBSCRIPTIONS) || !path.ends_with('.') || path == SUBSCRIPTIONS
                {
                    return Err(if model::supported(&path) {
                        UspError::new(
                            7024,
                            format!("`{path}` cannot be deleted; remove a service with its deployment unit's Uninstall() command"),
                        )
                    } else {
                        UspError::invalid_path(&path)
                    });
                }
                Ok(book
                    .subscriptions
                    .iter()
                    .filter(|s| {
                        model::under(&path, &s.path())
                            && s.path().matches('.').count() == path.matches('.').count()
                    })
                    .map(|s| s.path())
                    .collect::<Vec<_>>())
            })();
            match outcome {
                Ok(paths) => {
                    doomed.extend(paths.clone());
                    results.push(DeletedObjectResultsBuilder::new(path).set_success(paths, vec![]));
                }
                Err(e) if !d.allow_partial => {
                    self.audit("USP Delete", 400);
                    return Err(UspError::new(e.code, format!("{path}: {}", e.message)));
                }
                Err(e) => results.push(
                    DeletedObjectResultsBuilder::new(path).set_failure(e.code, Some(e.message)),
                ),
            }
        }
        book.subscriptions.retain(|s| !doomed.contains(&s.path()));
        book.save();
        drop(book);
        self.audit("USP Delete", 200);
        DeleteRespBuilder::new()
            .with_deleted_obj_results(results)
            .build()
            .map_err(internal)
    }

    /// `Operate`: the software-module commands. Synchronous ones answer with their result;
    /// asynchronous ones answer with a request path at once and report their completion as
    /// an `OperationComplete` notification (and a `DUStateChange!` event).
    async fn operate(self: &Arc<Self>, msg_id: &str, op: Operate) -> Option<Reply> {
        let send_resp = op.send_resp;
        let outcome = self.start_operation(msg_id, op).await;
        match outcome {
            Err(e) => Some(Err(e)),
            Ok(_) if !send_resp => None,
            Ok(results) => Some(
                OperateRespBuilder::new()
                    .with_operation_results(results)
                    .build()
                    .map_err(internal),
            ),
        }
    }

    async fn start_operation(
        self: &Arc<Self>,
        _msg_id: &str,
        op: Operate,
    ) -> Result<Vec<OperateRespResultBuilder>, UspError> {
        model::check_syntax(&op.command)?;
        let (object, name) = op
            .command
            .rsplit_once('.')
            .map(|(o, n)| (format!("{o}."), n.to_string()))
            .ok_or_else(|| UspError::invalid_path(&op.command))?;
        let command = model::supported(&object)
            .then(|| schema::object_of(&object.replace('*', "1")))
            .flatten()
            .and_then(|o| o.commands.iter().find(|c| c.name == name))
            .ok_or_else(|| {
                UspError::new(
                    7026,
                    format!(
                        "`{}` is not a command of this agent; GetSupportedDM lists them",
                        op.command
                    ),
                )
            })?;
        for arg in op.input_args.keys() {
            if !command.input.contains(&arg.as_str()) {
                return Err(UspError::new(
                    7027,
                    format!(
                        "`{arg}` is not an argument of {name}; it takes {}",
                        if command.input.is_empty() {
                            "none".to_string()
                        } else {
                            command.input.join(", ")
                        }
                    ),
                ));
            }
        }
        let args = &op.input_args;
        let arg = |k: &str| args.get(k).map(String::as_str).unwrap_or("");
        // Checked before anything runs: a bad argument changes nothing.
        match name.as_str() {
            "InstallDU()" | "Update()" => {
                if name == "InstallDU()" && arg("URL").is_empty() {
                    return Err(UspError::new(7027, "InstallDU() needs its URL: file:///PATH of a package, or REGISTRY/REPOSITORY:TAG"));
                }
                if !arg("Username").is_empty() || !arg("Password").is_empty() {
                    return Err(UspError::new(
                        7027,
                        "registry logins are not supported: leave Username and Password empty and let the gateway pull from a registry it may read",
                    ));
                }
                let env = arg("ExecutionEnvRef").trim_end_matches('.');
                if !env.is_empty() && env != EXEC_ENV.trim_end_matches('.') {
                    return Err(UspError::new(
                        7027,
                        format!(
                            "ExecutionEnvRef `{env}` does not exist; this gateway has one, {}",
                            EXEC_ENV.trim_end_matches('.')
                        ),
                    ));
                }
            }
            "SetRequestedState()" if !matches!(arg("RequestedState"), "Active" | "Idle") => {
                return Err(UspError::new(
                    7027,
                    format!(
                        "RequestedState `{}` is not one the gateway knows; give Active or Idle",
                        arg("RequestedState")
                    ),
                ));
            }
            _ => {}
        }
        let snap = self.snapshot_or_error()?;
        let n = object.matches('.').count();
        let targets: Vec<String> = snap
            .objects
            .keys()
            .filter(|o| o.matches('.').count() == n && model::under(&object, o))
            .cloned()
            .collect();
        if targets.is_empty() && !object.contains('*') {
            return Err(UspError::missing(&object));
        }
        let mut results = Vec::new();
        for target in targets {
            let executed = format!("{target}{name}");
            let unit = target
                .trim_end_matches('.')
                .rsplit('.')
                .next()
                .and_then(|i| i.parse::<u32>().ok())
                .and_then(|i| snap.units.get(&i).cloned());
            let job = Job {
                request: 0,
                command: name.clone(),
                object: target.clone(),
                service: unit,
                args: args.clone(),
                key: op.command_key.clone(),
                before: snap.objects.get(&target).cloned().unwrap_or_default(),
            };
            if command.asynchronous {
                let n = self
                    .next_request
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                self.book().requests.push(crate::book::Request {
                    instance: n,
                    originator: self.cfg.controller_id.clone(),
                    command: executed.clone(),
                    command_key: op.command_key.clone(),
                });
                let job = Job { request: n, ..job };
                let usp = self.clone();
                tokio::spawn(async move { usp.run_async(job).await });
                results.push(
                    OperateRespResultBuilder::new(executed)
                        .set_path(format!("Device.LocalAgent.Request.{n}.")),
                );
            } else {
                let done = self.run_job(&job).await;
                self.audit(&format!("USP {executed}"), status_of(&done));
                self.wake.notify_one();
                results.push(match done {
                    Ok(_) => OperateRespResultBuilder::new(executed).set_output_args(vec![]),
                    Err(e) => {
                        OperateRespResultBuilder::new(executed).set_failure(e.code, Some(e.message))
                    }
                });
            }
        }
        Ok(results)
    }

    /// Runs an asynchronous command, then notifies its completion to the subscriptions
    /// that ask for it.
    async fn run_async(self: Arc<Self>, job: Job) {
        let started = now();
        let done = self.run_job(&job).await;
        let executed = format!("{}{}", job.object, job.command);
        self.audit(&format!("USP {executed}"), status_of(&done));
        self.wake.notify_one();
        let (complete, event) = {
            let mut book = self.book();
            book.requests.retain(|r| r.instance != job.request);
            let pick = |kind: &str, path: &str| -> Vec<String> {
                book.subscriptions
                    .iter()
                    .filter(|s| {
                        s.enable
                            && s.notif_type == kind
                            && s.references().iter().any(|r| names(r, path))
                    })
                    .map(|s| s.id.clone())
                    .collect()
            };
            (
                pick("OperationComplete", &executed),
                pick("Event", &format!("{SM}DUStateChange!")),
            )
        };
        for id in complete {
            let b = NotifyBuilder::new(id);
            let b = match &done {
                Ok(_) => b.with_operation_complete_output_args(
                    job.object.clone(),
                    job.command.clone(),
                    job.key.clone(),
                    HashMap::new(),
                ),
                Err(e) => b.with_operation_complete_cmd_failure(
                    job.object.clone(),
                    job.command.clone(),
                    job.key.clone(),
                    e.code,
                    e.message.clone(),
                ),
            };
            self.notify_subscriber(b);
        }
        if event.is_empty() {
            return;
        }
        let unit = match &done {
            Ok(Some(i)) => Some(*i),
            _ => job
                .object
                .trim_end_matches('.')
                .rsplit('.')
                .next()
                .and_then(|i| i.parse::<u32>().ok()),
        };
        let operation = match job.command.as_str() {
            "InstallDU()" => "Install",
            "Update()" => "Update",
            _ => "Uninstall",
        };
        let snap = self.snapshot().ok();
        let du = unit.map(|i| format!("{SM}DeploymentUnit.{i}"));
        let du_params = du
            .as_ref()
            .and_then(|d| snap.as_ref()?.objects.get(&format!("{d}.")).cloned())
            .or_else(|| (!job.before.is_empty()).then(|| job.before.clone()));
        let state = match (&done, operation) {
            (Err(_), "Install") => "Failed",
            (Err(_), _) => "Installed",
            (Ok(_), "Uninstall") => "Uninstalled",
            (Ok(_), _) => "Installed",
        };
        let param = |k: &str| {
            du_params
                .as_ref()
                .and_then(|p| p.get(k).cloned())
                .unwrap_or_default()
        };
        let uuid = du_params
            .as_ref()
            .and_then(|p| p.get("UUID").cloned())
            .unwrap_or_else(|| job.args.get("UUID").cloned().unwrap_or_default());
        let (code, text) = match &done {
            Ok(_) => ("0".to_string(), String::new()),
            Err(e) => (e.code.to_string(), e.message.clone()),
        };
        let args = HashMap::from([
            ("UUID".to_string(), uuid),
            (
                "DeploymentUnitRef".to_string(),
                du.clone().unwrap_or_default(),
            ),
            ("Version".to_string(), param("Version")),
            ("CurrentState".to_string(), state.to_string()),
            ("Resolved".to_string(), (state == "Installed").to_string()),
            (
                "ExecutionUnitRefList".to_string(),
                if state == "Installed" {
                    param("ExecutionUnitList")
                } else {
                    String::new()
                },
            ),
            ("StartTime".to_string(), started),
            ("CompleteTime".to_string(), now()),
            ("OperationPerformed".to_string(), operation.to_string()),
            ("Fault.FaultCode".to_string(), code),
            ("Fault.FaultString".to_string(), text),
        ]);
        for id in event {
            self.notify_subscriber(NotifyBuilder::new(id).with_event(
                SM.to_string(),
                "DUStateChange!".to_string(),
                args.clone(),
            ));
        }
    }

    /// Does what a command asks, through the agent as the operator. For an install, the
    /// new deployment unit's instance number.
    async fn run_job(&self, job: &Job) -> Result<Option<u32>, UspError> {
        let who = Principal::Operator;
        let agent = &self.agent;
        let key = match &job.service {
            Some(id) => Some(agent.resolve(&who, id).map_err(command_error)?),
            None => None,
        };
        let url = job.args.get("URL").map(String::as_str).unwrap_or("");
        match (job.command.as_str(), key) {
            ("InstallDU()", _) => {
                let opts = InstallOptions {
                    start: true,
                    ..Default::default()
                };
                let detail = match url.strip_prefix("file://") {
                    Some(path) => agent.install(&who, Path::new(path), &opts).await,
                    None => agent.pull_and_install(&who, reference(url), &opts).await,
                }
                .map_err(command_error)?;
                let mut book = self.book();
                let i = book.unit(&detail.summary.id);
                book.save();
                Ok(Some(i))
            }
            ("Update()", Some(key)) => {
                agent
                    .access(&who, &key, ServiceAction::Run)
                    .map_err(command_error)?;
                let source = if url.is_empty() {
                    agent.detail(&key).map_err(command_error)?.source
                } else {
                    Some(url.to_string())
                };
                let Some(source) = source else {
                    return Err(UspError::new(7027, "Update() needs a URL: this deployment unit was not installed from a registry"));
                };
                let (file, pulled, from) = match source.strip_prefix("file://") {
                    Some(path) => (std::path::PathBuf::from(path), false, None),
                    None => {
                        let (tar, parsed) = agent
                            .pull(reference(&source), None)
                            .await
                            .map_err(command_error)?;
                        (tar, true, Some(parsed))
                    }
                };
                let updated = agent
                    .update(&who, &key, &file, None, false, agent::DEFAULT_WINDOW, from)
                    .await
                    .map_err(command_error);
                if pulled {
                    let _ = std::fs::remove_file(&file);
                }
                updated.map(|_| None)
            }
            ("Uninstall()", Some(key)) => {
                agent
                    .access(&who, &key, ServiceAction::Remove)
                    .map_err(command_error)?;
                agent
                    .remove(&key)
                    .await
                    .map_err(command_error)
                    .map(|()| None)
            }
            ("SetRequestedState()", Some(key)) => {
                agent
                    .access(&who, &key, ServiceAction::Run)
                    .map_err(command_error)?;
                let done = if job.args.get("RequestedState").map(String::as_str) == Some("Active") {
                    agent.start_making_room(&key, &[]).await
                } else {
                    agent.stop(&key).await
                };
                done.map_err(command_error).map(|_| None)
            }
            (_, None) => Err(UspError::new(
                7016,
                format!("`{}` no longer exists", job.object),
            )),
            (other, _) => Err(UspError::new(7022, format!("{other} is not implemented"))),
        }
    }
}

/// One command on one object.
struct Job {
    /// The `Device.LocalAgent.Request.{i}` of an asynchronous command.
    request: u32,
    command: String,
    object: String,
    /// The service (`provider/name`) of the unit the command is on.
    service: Option<String>,
    args: HashMap<String, String>,
    key: String,
    /// The object's parameters when the command started (an uninstalled unit's are gone
    /// when its event is sent).
    before: std::collections::BTreeMap<String, String>,
}

/// An image reference from a URL: `oci://` and `docker://` prefixes are dropped.
fn reference(url: &str) -> &str {
    url.strip_prefix("oci://")
        .or_else(|| url.strip_prefix("docker://"))
        .unwrap_or(url)
}

/// Whether the subscription reference `r` names `path` (a command or event path): the same
/// path (with `*` for instance numbers), or an object above it.
fn names(r: &str, path: &str) -> bool {
    if r.ends_with('.') {
        let object = match path.rsplit_once('.') {
            Some((o, _)) => format!("{o}."),
            None => return false,
        };
        return model::under(r, &object);
    }
    let (rs, ps): (Vec<&str>, Vec<&str>) = (r.split('.').collect(), path.split('.').collect());
    rs.len() == ps.len()
        && rs
            .iter()
            .zip(&ps)
            .all(|(a, b)| a == b || (*a == "*" && b.bytes().all(|c| c.is_ascii_digit())))
}

/// The USP error for an agent error: the agent's sentence, under the code that fits.
fn command_error(e: AgentError) -> UspError {
    let code = match &e {
        AgentError::BadRequest(_) => 7027,
        AgentError::Forbidden(_)
        | AgentError::Untrusted(_)
        | AgentError::Signature(_)
        | AgentError::Catalog { .. } => 7006,
        AgentError::Refused(_) | AgentError::ImageTooLarge { .. } => 7005,
        AgentError::NotFound(_) => 7016,
        AgentError::Io { .. }
        | AgentError::Store(_)
        | AgentError::Task(_)
        | AgentError::Internal(_) => 7003,
        _ => 7022,
    };
    UspError::new(code, e.to_string())
}

/// The HTTP-like status the audit log records for a command's outcome.
fn status_of<T>(done: &Result<T, UspError>) -> u16 {
    match done {
        Ok(_) => 200,
        Err(e) => match e.code {
            7006 => 403,
            7016 | 7026 => 404,
            7005 | 7022 => 409,
            7003 => 500,
            _ => 400,
        },
    }
}

fn internal(e: impl std::fmt::Display) -> UspError {
    UspError::new(7003, format!("cannot encode the response: {e}"))
}

fn not_creatable(path: &str) -> UspError {
    if model::supported(path) {
        UspError::new(
            7019,
            format!("`{path}` cannot be added to; install a deployment unit with {SM}InstallDU()"),
        )
    } else {
        UspError::invalid_path(path)
    }
}

/// The subscriptions `obj` names with its settings applied, checked, added to `changed`.
fn update_subscriptions(
    book: &Book,
    obj: &rusp_lib::usp::mod_Set::UpdateObject,
    changed: &mut Vec<crate::book::Subscription>,
) -> Result<Vec<SetOperationSuccessBuilder>, UspError> {
    let path = &obj.obj_path;
    model::check_syntax(path)?;
    if !path.starts_with(SUBSCRIPTIONS) || !path.ends_with('.') {
        if !model::supported(path) {
            return Err(UspError::invalid_path(path));
        }
        let hint = if path.contains("ExecutionUnit") {
            "; change an execution unit's state with its SetRequestedState() command"
        } else {
            ""
        };
        return Err(UspError::new(
            7013,
            format!("the parameters of `{path}` are read-only{hint}"),
        ));
    }
    let depth = path.matches('.').count();
    let targets: Vec<_> = book
        .subscriptions
        .iter()
        .filter(|s| s.path().matches('.').count() == depth && model::under(path, &s.path()))
        .collect();
    if targets.is_empty() && !path.contains('*') {
        return Err(UspError::missing(path));
    }
    let mut done = Vec::new();
    for sub in targets {
        let mut sub = changed
            .iter()
            .find(|c| c.instance == sub.instance)
            .cloned()
            .unwrap_or_else(|| sub.clone());
        let mut updated = HashMap::new();
        for p in &obj.param_settings {
            sub.set(&p.param, &p.value)?;
            updated.insert(p.param.clone(), p.value.clone());
        }
        sub.check()?;
        if book
            .subscriptions
            .iter()
            .any(|o| o.instance != sub.instance && (o.id == sub.id || o.alias == sub.alias))
        {
            return Err(UspError::new(
                7025,
                format!(
                    "another subscription has ID `{}` or Alias `{}`",
                    sub.id, sub.alias
                ),
            ));
        }
        done.push(SetOperationSuccessBuilder::new(sub.path()).with_updated_params(updated));
        changed.retain(|c| c.instance != sub.instance);
        changed.push(sub);
    }
    Ok(done)
}

/// `GetSupportedDM`: the supported objects at and below each requested path.
fn get_supported_dm(g: GetSupportedDM) -> Reply {
    let results = g
        .obj_paths
        .into_iter()
        .map(|path| {
            let r = GSDMReqObjectResultBuilder::new(path.clone())
                .with_data_model_inst_uri("urn:broadband-forum-org:tr-181-2-16-0-usp".into());
            let generic = schema::generic(&path);
            if model::check_syntax(&path).is_err()
                || !path.ends_with('.')
                || !model::supported(&path)
            {
                return r.set_err(7026, Some(UspError::invalid_path(&path).message));
            }
            let depth = generic.matches('.').count();
            let objects = schema::OBJECTS
                .iter()
                .filter(|o| o.path.starts_with(&generic))
                .filter(|o| {
                    let below = o.path.matches('.').count() - depth;
                    !g.first_level_only || below <= 1 || (below == 2 && o.path.ends_with("{i}."))
                })
                .map(|o| {
                    let mut b = GSDMSupportedObjectResultBuilder::new(o.path.to_string())
                        .with_is_multi_instance(o.multi_instance);
                    b = if o.add_delete {
                        b.set_access_add_delete()
                    } else {
                        b.set_access_read_only()
                    };
                    if g.return_params {
                        b = b.with_supported_params(
                            o.params
                                .iter()
                                .map(|p| {
                                    let r = GSDMParamResult::new(p.name.to_string());
                                    let r = if p.writable {
                                        r.set_access_read_write()
                                    } else {
                                        r.set_access_read_only()
                                    };
                                    let r = match p.ty {
                                        Type::String => r.set_type_string(),
                                        Type::Boolean => r.set_type_boolean(),
                                        Type::UnsignedInt => r.set_type_unsigned_int(),
                                        Type::Int => r.set_type_int(),
                                        Type::Long => r.set_type_long(),
                                        Type::DateTime => r.set_type_datetime(),
                                    };
                                    r.set_value_change_allowed()
                                })
                                .collect(),
                        );
                    }
                    if g.return_commands {
                        b = b.with_supported_commands(
                            o.commands
                                .iter()
                                .map(|c| {
                                    let r = GSDMCommandResult::new(c.name.to_string())
                                        .with_input_arg_names(
                                            c.input.iter().map(|s| s.to_string()).collect(),
                                        )
                                        .with_output_arg_names(
                                            c.output.iter().map(|s| s.to_string()).collect(),
                                        );
                                    if c.asynchronous {
                                        r.set_async()
                                    } else {
                                        r.set_sync()
                                    }
                                })
                                .collect(),
                        );
                    }
                    if g.return_events {
                        b = b.with_supported_events(
                            o.events
                                .iter()
                                .map(|e| {
                                    GSDMEventResult::new(e.name.to_string()).with_arg_names(
                                        e.args.iter().map(|s| s.to_string()).collect(),
                                    )
                                })
                                .collect(),
                        );
                    }
                    b
                })
                .collect();
            r.with_supported_objs(objects)
        })
        .collect();
    GetSupportedDMRespBuilder::new()
        .with_req_obj_results(results)
        .build()
        .map_err(internal)
}

/// Now, as a TR-106 dateTime (UTC).
pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_commands_events_and_objects_above_them() {
        let cmd = "Device.SoftwareModules.DeploymentUnit.3.Uninstall()";
        assert!(names(cmd, cmd));
        assert!(names(
            "Device.SoftwareModules.DeploymentUnit.*.Uninstall()",
            cmd
        ));
        assert!(names("Device.SoftwareModules.", cmd));
        assert!(names("Device.SoftwareModules.DeploymentUnit.3.", cmd));
        assert!(!names("Device.SoftwareModules.DeploymentUnit.4.", cmd));
        assert!(!names("Device.SoftwareModules.InstallDU()", cmd));
        assert!(names(
            "Device.SoftwareModules.DUStateChange!",
            "Device.SoftwareModules.DUStateChange!"
        ));
    }

    #[test]
    fn dates_are_tr106() {
        let t = now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(Type::DateTime.accepts(&t));
        assert!(t.starts_with("20"));
    }
}
