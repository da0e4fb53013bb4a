//! What a datapath operation that failed says: what it was doing, and why.

#[derive(Debug)]
pub struct DatapathError {
    context: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for DatapathError {
    // The whole chain on one line: aya's errors put the errno in a source.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.context)?;
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self.source.as_ref());
        while let Some(e) = next {
            let text = e.to_string();
            if !text.is_empty() {
                write!(f, ": {text}")?;
            }
            next = e.source();
        }
        Ok(())
    }
}

impl std::error::Error for DatapathError {}

impl crate::error::Kind for DatapathError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Internal
    }
}

pub(crate) trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, DatapathError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, DatapathError> {
        self.map_err(|e| DatapathError {
            context: context(),
            source: Box::new(e),
        })
    }
}

pub(crate) fn plain(context: String) -> DatapathError {
    DatapathError {
        context,
        source: "".into(),
    }
}

pub type Result<T, E = DatapathError> = std::result::Result<T, E>;
