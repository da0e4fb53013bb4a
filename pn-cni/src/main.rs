//! `pn`, the CNI plugin: a container runtime runs it with the `CNI_*`
//! environment and a network configuration on stdin; it asks the running
//! pn-agent (over its API socket) to attach, detach or check the runtime's
//! namespace, and prints the CNI result or error object. The agent does
//! all the work, so a container attached this way is like any other.
//!
//! Spec 1.0.0 and 1.1.0: ADD, DEL, CHECK, VERSION; with 1.1.0 also STATUS
//! (is the agent there and its store reachable) and GC (detach what this
//! network attached that the runtime no longer lists).

mod conf;
mod reply;

use std::{io::Read, process::ExitCode};

use conf::{Conf, Env, SUPPORTED};
use pn_api::{
    client::Client,
    key::RuntimeRef,
    proto::{Attachment, ContainerInfo, Request, Status},
};
use reply::Op;
use rscni_types::{
    error::Error,
    types::{CNIResultWithVersion, Cmd, ErrorResult},
    version::PluginInfo,
};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = conf::declared_version(&stdin).unwrap_or(SUPPORTED[0]);
    let outcome = match read {
        Ok(_) => run(|k| std::env::var(k).ok(), &stdin),
        Err(e) => Err(Error::IOFailure(format!("reading the configuration: {e}"))),
    };
    let (text, code) = match outcome {
        Ok(Some(text)) => (text, ExitCode::SUCCESS),
        Ok(None) => (String::new(), ExitCode::SUCCESS),
        Err(e) => (
            serde_json::to_string(&ErrorResult::new(version, &e)).unwrap_or_else(|_| "{}".into()),
            ExitCode::FAILURE,
        ),
    };
    if !text.is_empty() {
        println!("{text}");
    }
    code
}

/// One invocation: what to print on success (nothing but for ADD and
/// VERSION).
fn run(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<String>, Error> {
    let env = Env::read(get)?;
    if env.cmd == Cmd::Version {
        let info = PluginInfo::new(SUPPORTED[0], SUPPORTED.to_vec());
        return Ok(Some(to_json(&info)?));
    }
    let conf = Conf::parse(stdin)?;
    // CHECK needs 1.0.0 here; STATUS and GC 1.1.0.
    conf.version.allows(env.cmd)?;
    let runtime = || -> Result<RuntimeRef, Error> {
        Ok(RuntimeRef {
            id: env.container_id()?,
            network: conf.net.name.clone(),
        })
    };
    match env.cmd {
        Cmd::Add => {
            let (runtime, ifname, netns) = (runtime()?, env.ifname()?, env.netns()?);
            let a: Attachment = call(
                &conf,
                Op::Add,
                Request::CniAdd {
                    app: conf.app,
                    ctype: conf.ctype.clone(),
                    index: env.index.or(conf.index),
                    netns: netns.clone(),
                    ifname: ifname.clone(),
                    runtime,
                },
            )?;
            let result = reply::add_result(conf.net.prev_result.clone(), &ifname, &netns, &a);
            Ok(Some(to_json(&CNIResultWithVersion::new(
                conf.version,
                result,
            ))?))
        }
        Cmd::Del => {
            // The namespace may be gone already: DEL does not need it.
            let _: Option<ContainerInfo> = call(
                &conf,
                Op::Del,
                Request::CniDel {
                    app: conf.app,
                    ifname: env.ifname()?,
                    runtime: runtime()?,
                },
            )?;
            Ok(None)
        }
        Cmd::Check => {
            let a: Attachment = call(
                &conf,
                Op::Check,
                Request::CniCheck {
                    app: conf.app,
                    netns: env.netns()?,
                    ifname: env.ifname()?,
                    runtime: runtime()?,
                },
            )?;
            check_prev_result(&conf, &a)?;
            Ok(None)
        }
        Cmd::Gc => {
            let valid = conf
                .net
                .valid_attachments
                .iter()
                .flatten()
                .map(|a| (a.container_id.clone(), a.ifname.clone()))
                .collect();
            let _: Vec<ContainerInfo> = call(
                &conf,
                Op::Del,
                Request::CniGc {
                    app: conf.app,
                    network: conf.net.name.clone(),
                    valid,
                },
            )?;
            Ok(None)
        }
        Cmd::Status => {
            let s: Status = call(&conf, Op::Status, Request::Status)?;
            if s.store.reachable {
                Ok(None)
            } else {
                // Attachments stand (the maps are pinned); new ones cannot
                // be recorded.
                Err(Error::PluginNotAvailable(format!(
                    "pn-agent on {} cannot reach its store ({}): {}",
                    s.host,
                    s.store.backend,
                    s.store.last_error.unwrap_or_default()
                )))
            }
        }
        Cmd::Version => unreachable!("answered above"),
    }
}

/// CHECK: the result the runtime kept must hold this attachment's address.
fn check_prev_result(conf: &Conf, a: &Attachment) -> Result<(), Error> {
    let Some(prev) = &conf.net.prev_result else {
        return Ok(());
    };
    let ip = std::net::IpAddr::V4(a.container.ip);
    if prev.ips.iter().any(|c| c.address.addr() == ip) {
        Ok(())
    } else {
        Err(reply::internal(format!(
            "the runtime's result does not hold {ip}, the address of container {}",
            a.container.id
        )))
    }
}

fn call<T: serde::de::DeserializeOwned>(conf: &Conf, op: Op, req: Request) -> Result<T, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| reply::internal(format!("starting the runtime: {e}")))?;
    rt.block_on(Client::call(&conf.agent_socket, &req))
        .map_err(|e| reply::client_error(e, op))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, Error> {
    serde_json::to_string(v).map_err(|e| reply::internal(format!("encoding the result: {e}")))
}
