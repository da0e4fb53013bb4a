//! What can go wrong in a hand-over.

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("the other agent closed the hand-over")]
    Closed,
    #[error("hand-over protocol: {0}")]
    Protocol(&'static str),
    #[error("the running agent refused the hand-over: {0}")]
    Refused(String),
    #[error("the other side does not hold this host's key")]
    Forged,
    #[error("uid {0} may not take part in a hand-over")]
    Credentials(u32),
    #[error("another agent is still using state dir {0}")]
    Busy(String),
}

impl crate::error::Kind for HandoverError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            HandoverError::Refused(_)
            | HandoverError::Credentials(_)
            | HandoverError::Forged
            | HandoverError::Busy(_) => ErrorKind::Conflict,
            HandoverError::Closed => ErrorKind::Unavailable,
            HandoverError::Io(..) | HandoverError::Protocol(_) => ErrorKind::Internal,
        }
    }
}
