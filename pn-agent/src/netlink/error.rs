//! What a netlink operation that failed says, and the errno values it is judged by.

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("network namespace {0} not found")]
    NamespaceMissing(String),
    #[error("cannot open network namespace {0}: {1}")]
    Namespace(String, std::io::Error),
    #[error("interface {0} already exists{1}")]
    InterfaceExists(String, String),
    #[error("interface {0} not found")]
    InterfaceMissing(String),
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl crate::error::Kind for NetlinkError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            NetlinkError::NamespaceMissing(_) | NetlinkError::InterfaceMissing(_) => {
                ErrorKind::NotFound
            }
            NetlinkError::InterfaceExists(..) => ErrorKind::Conflict,
            // The path given is not a namespace we can enter.
            NetlinkError::Namespace(..) => ErrorKind::Invalid,
            NetlinkError::Kernel { .. } | NetlinkError::Other(_) => ErrorKind::Internal,
        }
    }
}

pub(super) type Result<T, E = NetlinkError> = std::result::Result<T, E>;

pub(super) const EEXIST: i32 = libc::EEXIST;
pub(super) const ENODEV: i32 = libc::ENODEV;
pub(super) const ESRCH: i32 = libc::ESRCH;
pub(super) const ENOENT: i32 = libc::ENOENT;

/// errno of a netlink error reply, if it is one.
pub(super) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

pub(super) fn kernel(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Kernel { op, source }
}
