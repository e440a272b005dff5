//! The supported data model: every object, parameter, command and event the agent serves,
//! in the Broadband Forum's TR-181 names (with `X_SHG_` for what TR-181 has no name for).
//! `GetSupportedDM` answers from it, `Set` and `Add` check names and types against it, and a
//! test holds every value the agent serves to it.

/// A parameter's type, as `GetSupportedDM` names it and `Set` checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    String,
    Boolean,
    UnsignedInt,
    Int,
    Long,
    DateTime,
}

impl Type {
    /// Whether `value` is a valid value of this type (TR-106 lexical forms).
    pub fn accepts(self, value: &str) -> bool {
        match self {
            Type::String => true,
            Type::Boolean => matches!(value, "true" | "false" | "1" | "0"),
            Type::UnsignedInt => value.parse::<u32>().is_ok(),
            Type::Int => value.parse::<i32>().is_ok(),
            Type::Long => value.parse::<i64>().is_ok(),
            Type::DateTime => value.len() >= 20 && value.as_bytes()[4] == b'-',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Type::String => "string",
            Type::Boolean => "boolean",
            Type::UnsignedInt => "unsignedInt",
            Type::Int => "int",
            Type::Long => "long",
            Type::DateTime => "dateTime",
        }
    }
}

pub struct Param {
    pub name: &'static str,
    pub ty: Type,
    pub writable: bool,
}

pub struct Command {
    /// With its `()`.
    pub name: &'static str,
    pub input: &'static [&'static str],
    pub output: &'static [&'static str],
    pub asynchronous: bool,
}

pub struct Event {
    /// With its `!`.
    pub name: &'static str,
    pub args: &'static [&'static str],
}

pub struct Object {
    /// The supported path, `{i}` for instance numbers, ending in `.`.
    pub path: &'static str,
    pub multi_instance: bool,
    /// Whether a controller may `Add` and `Delete` instances.
    pub add_delete: bool,
    pub params: &'static [Param],
    pub commands: &'static [Command],
    pub events: &'static [Event],
}

impl Object {
    pub fn param(&self, name: &str) -> Option<&'static Param> {
        self.params.iter().find(|p| p.name == name)
    }
}

const fn ro(name: &'static str, ty: Type) -> Param {
    Param {
        name,
        ty,
        writable: false,
    }
}

const fn rw(name: &'static str, ty: Type) -> Param {
    Param {
        name,
        ty,
        writable: true,
    }
}

use Type::*;

pub const OBJECTS: &[Object] = &[
    Object {
        path: "Device.",
        multi_instance: false,
        add_delete: false,
        params: &[],
        commands: &[],
        events: &[Event {
            name: "Boot!",
            args: &["Cause", "CommandKey", "FirmwareUpdated", "ParameterMap"],
        }],
    },
    Object {
        path: "Device.DeviceInfo.",
        multi_instance: false,
        add_delete: false,
        params: &[
            ro("Manufacturer", String),
            ro("ModelName", String),
            ro("SoftwareVersion", String),
        ],
        commands: &[],
        events: &[],
    },
    Object {
        path: "Device.LocalAgent.",
        multi_instance: false,
        add_delete: false,
        params: &[
            ro("EndpointID", String),
            ro("SoftwareVersion", String),
            ro("SupportedProtocols", String),
            ro("SubscriptionNumberOfEntries", UnsignedInt),
            ro("RequestNumberOfEntries", UnsignedInt),
        ],
        commands: &[],
        events: &[],
    },
    Object {
        path: "Device.LocalAgent.Subscription.{i}.",
        multi_instance: true,
        add_delete: true,
        params: &[
            rw("Alias", String),
            rw("Enable", Boolean),
            rw("Recipient", String),
            rw("ID", String),
            ro("CreationDate", DateTime),
            rw("NotifType", String),
            rw("ReferenceList", String),
            rw("Persistent", Boolean),
            rw("TimeToLive", UnsignedInt),
            rw("NotifRetry", Boolean),
            rw("NotifExpiration", UnsignedInt),
        ],
        commands: &[],
        events: &[],
    },
    Object {
        path: "Device.LocalAgent.Request.{i}.",
        multi_instance: true,
        add_delete: false,
        params: &[
            ro("Originator", String),
            ro("Command", String),
            ro("CommandKey", String),
            ro("Status", String),
        ],
        commands: &[],
        events: &[],
    },
    Object {
        path: "Device.SoftwareModules.",
        multi_instance: false,
        add_delete: false,
        params: &[
            ro("ExecEnvNumberOfEntries", UnsignedInt),
            ro("DeploymentUnitNumberOfEntries", UnsignedInt),
            ro("ExecutionUnitNumberOfEntries", UnsignedInt),
        ],
        commands: &[Command {
            name: "InstallDU()",
            input: &["URL", "UUID", "Username", "Password", "ExecutionEnvRef"],
            output: &[],
            asynchronous: true,
        }],
        events: &[Event {
            name: "DUStateChange!",
            args: &[
                "UUID",
                "DeploymentUnitRef",
                "Version",
                "CurrentState",
                "Resolved",
                "ExecutionUnitRefList",
                "StartTime",
                "CompleteTime",
                "OperationPerformed",
                "Fault.FaultCode",
                "Fault.FaultString",
            ],
        }],
    },
    Object {
        path: "Device.SoftwareModules.ExecEnv.{i}.",
        multi_instance: true,
        add_delete: false,
        params: &[
            ro("Enable", Boolean),
            ro("Status", String),
            ro("Alias", String),
            ro("Name", String),
            ro("Type", String),
            ro("Vendor", String),
            ro("Version", String),
            ro("AllocatedDiskSpace", Int),
            ro("AvailableDiskSpace", Int),
            ro("AllocatedMemory", Int),
            ro("AvailableMemory", Int),
            ro("ActiveExecutionUnits", String),
            ro("X_SHG_AllocatedCPU", UnsignedInt),
            ro("X_SHG_AvailableCPU", UnsignedInt),
            ro("X_SHG_AllocatedBandwidthDown", Long),
            ro("X_SHG_AvailableBandwidthDown", Long),
            ro("X_SHG_AllocatedBandwidthUp", Long),
            ro("X_SHG_AvailableBandwidthUp", Long),
        ],
        commands: &[],
        events: &[],
    },
    Object {
        path: "Device.SoftwareModules.DeploymentUnit.{i}.",
        multi_instance: true,
        add_delete: false,
        params: &[
            ro("UUID", String),
            ro("DUID", String),
            ro("Alias", String),
            ro("Name", String),
            ro("Status", String),
            ro("Resolved", Boolean),
            ro("URL", String),
            ro("Description", String),
            ro("Vendor", String),
            ro("Version", String),
            ro("ExecutionUnitList", String),
            ro("ExecutionEnvRef", String),
        ],
        commands: &[
            Command {
                name: "Update()",
                input: &["URL", "Username", "Password"],
                output: &[],
                asynchronous: true,
            },
            Command {
                name: "Uninstall()",
                input: &[],
                output: &[],
                asynchronous: true,
            },
        ],
        events: &[],
    },
    Object {
        path: "Device.SoftwareModules.ExecutionUnit.{i}.",
        multi_instance: true,
        add_delete: false,
        params: &[
            ro("EUID", String),
            ro("Alias", String),
            ro("Name", String),
            ro("ExecEnvLabel", String),
            ro("Status", String),
            ro("RequestedState", String),
            ro("ExecutionFaultCode", String),
            ro("ExecutionFaultMessage", String),
            ro("AutoStart", Boolean),
            ro("RunLevel", UnsignedInt),
            ro("Vendor", String),
            ro("Version", String),
            ro("Description", String),
            ro("DiskSpaceInUse", Int),
            ro("MemoryInUse", Int),
            ro("References", String),
            ro("ExecutionEnvRef", String),
            ro("X_SHG_Provider", String),
            ro("X_SHG_Health", String),
            ro("X_SHG_RestartCount", UnsignedInt),
            ro("X_SHG_Priority", Int),
            ro("X_SHG_CPUInUse", Int),
            ro("X_SHG_CPUReserve", UnsignedInt),
            ro("X_SHG_MemoryReserve", Long),
        ],
        commands: &[Command {
            name: "SetRequestedState()",
            input: &["RequestedState"],
            output: &[],
            asynchronous: false,
        }],
        events: &[],
    },
];

/// A path with its instance numbers and `*` as `{i}`, the form [`OBJECTS`] names paths in
/// (`Device.SoftwareModules.ExecutionUnit.3.` → `Device.SoftwareModules.ExecutionUnit.{i}.`).
pub fn generic(path: &str) -> std::string::String {
    path.split('.')
        .map(|s| {
            if !s.is_empty() && (s == "*" || s.bytes().all(|b| b.is_ascii_digit())) {
                "{i}"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The supported object of an instantiated object path (`…ExecutionUnit.3.` →
/// `…ExecutionUnit.{i}.`), if any.
pub fn object_of(path: &str) -> Option<&'static Object> {
    let generic = generic(path);
    OBJECTS.iter().find(|o| o.path == generic)
}

/// The supported table paths (`Device.SoftwareModules.ExecutionUnit.`): valid paths that
/// are not objects themselves.
pub fn is_table(path: &str) -> bool {
    OBJECTS
        .iter()
        .any(|o| o.multi_instance && o.path.strip_suffix("{i}.") == Some(path))
}
