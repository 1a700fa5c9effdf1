//! castra.toml and bootstrap.toml as written: private serde mirror structs that keep each
//! value's byte span (`toml::Spanned`), so validation can point at it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

// ---------------------------------------------------------------------------------------------
// Raw (as written) structures
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) version: Option<String>,
    pub(super) project: RawProject,
    pub(super) bootstrap: Option<RawGlobalBootstrap>,
    pub(super) vms: Option<Vec<RawVm>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProject {
    pub(super) name: Spanned<String>,
    pub(super) network: Option<Spanned<bool>>,
    pub(super) image_mirror: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobalBootstrap {
    pub(super) handshake_timeout_secs: Option<Spanned<i64>>,
    pub(super) apply_timeout_secs: Option<Spanned<i64>>,
    pub(super) verify_timeout_secs: Option<Spanned<i64>>,
    pub(super) output_log_max: Option<Spanned<RawMemory>>,
    pub(super) keep_run_logs: Option<Spanned<i64>>,
    pub(super) remote_dir: Option<Spanned<String>>,
    pub(super) env: Option<RawEnv>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVm {
    pub(super) name: Spanned<String>,
    pub(super) description: Option<String>,
    pub(super) replicas: Option<Spanned<i64>>,
    pub(super) backend: Option<Spanned<String>>,
    pub(super) base_image: Option<Spanned<String>>,
    pub(super) base_image_digest: Option<Spanned<String>>,
    pub(super) base_image_checksums: Option<Spanned<String>>,
    pub(super) base_image_import: Option<Spanned<bool>>,
    pub(super) kernel: Option<Spanned<String>>,
    pub(super) initrd: Option<Spanned<String>>,
    pub(super) cmdline: Option<Spanned<String>>,
    pub(super) cpus: Option<Spanned<i64>>,
    pub(super) memory: Option<Spanned<RawMemory>>,
    pub(super) ephemeral: Option<Spanned<bool>>,
    pub(super) accel: Option<Spanned<String>>,
    pub(super) port_forwards: Option<Spanned<Vec<RawPortForward>>>,
    pub(super) disk: Option<Spanned<RawMemory>>,
    pub(super) firmware: Option<Spanned<String>>,
    pub(super) serial_log_max: Option<Spanned<RawMemory>>,
    pub(super) ssh: Option<RawSsh>,
    pub(super) cloud_init: Option<Spanned<RawCloudInit>>,
    pub(super) mounts: Option<Spanned<Vec<RawMount>>>,
    pub(super) bootstrap: Option<RawVmBootstrap>,
    pub(super) libvirt: Option<Spanned<RawLibvirt>>,
}

/// `[vms.libvirt]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLibvirt {
    pub(super) uri: Option<Spanned<String>>,
    pub(super) pool: Option<Spanned<String>>,
    pub(super) upload: Option<Spanned<bool>>,
    pub(super) known_hosts: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMount {
    pub(super) host: Spanned<String>,
    pub(super) guest: Spanned<String>,
    pub(super) readonly: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCloudInit {
    pub(super) enabled: Option<bool>,
    pub(super) authorized_keys: Option<Vec<Spanned<String>>>,
    pub(super) user_data: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPortForward {
    pub(super) host: Spanned<i64>,
    pub(super) guest: Spanned<i64>,
    pub(super) protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSsh {
    pub(super) host: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) user: Option<Spanned<String>>,
    pub(super) identity: Option<Spanned<String>>,
    pub(super) options: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVmBootstrap {
    pub(super) mode: Option<Spanned<String>>,
    pub(super) script: Option<Spanned<String>>,
    pub(super) payload: Option<Spanned<String>>,
    pub(super) verify_command: Option<String>,
    pub(super) verify_path: Option<Spanned<String>>,
    pub(super) handshake_timeout_secs: Option<Spanned<i64>>,
    pub(super) apply_timeout_secs: Option<Spanned<i64>>,
    pub(super) verify_timeout_secs: Option<Spanned<i64>>,
    pub(super) output_log_max: Option<Spanned<RawMemory>>,
    pub(super) keep_run_logs: Option<Spanned<i64>>,
    pub(super) remote_dir: Option<Spanned<String>>,
    pub(super) vizier_dir: Option<Spanned<String>>,
    pub(super) env: Option<RawEnv>,
}

/// Contents of a `bootstrap.toml` beside a script.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetadata {
    pub(super) ssh: Option<RawSsh>,
    pub(super) env: Option<RawEnv>,
}

pub(super) type RawEnv = BTreeMap<Spanned<String>, Spanned<EnvValue>>;

/// `memory` as written: an integer (MiB) or a size string.
pub(super) enum RawMemory {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawMemory {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MemoryVisitor;
        impl Visitor<'_> for MemoryVisitor {
            type Value = RawMemory;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"2 GiB\" or an integer number of MiB")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawMemory, E> {
                Ok(RawMemory::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawMemory, E> {
                Ok(RawMemory::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawMemory, E> {
                Ok(RawMemory::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(MemoryVisitor)
    }
}

/// An env value as written. Non-strings are accepted here and rejected during validation, so
/// the error can name the variable (serde's key path cannot see through spanned map keys).
pub(super) enum EnvValue {
    Text(String),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<EnvValue, E> {
                Ok(EnvValue::Other("an integer"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<EnvValue, E> {
                Ok(EnvValue::Other("an integer"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<EnvValue, E> {
                Ok(EnvValue::Other("a float"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<EnvValue, E> {
                Ok(EnvValue::Other("a boolean"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EnvValue, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(EnvValue::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EnvValue, A::Error> {
                let mut kind = "a table";
                while let Some(key) = map.next_key::<String>()? {
                    if key == "$__toml_private_datetime" {
                        kind = "a date/time";
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(EnvValue::Other(kind))
            }
        }
        deserializer.deserialize_any(EnvVisitor)
    }
}
