//! How the binary words an error on one line (stderr, the journal).

pub(crate) fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}
