//! The DNS name grammar of the zone `private-network.internal.`:
//!
//! - `ap-X.pn-Y.private-network.internal.` → the `web` containers of app X,
//! - `TYPE.ap-X.pn-Y.private-network.internal.` → every container of that type,
//! - `N.TYPE.ap-X.pn-Y.private-network.internal.` → container N of that type.
//!
//! Case-insensitive, trailing dot optional. Parsing works on labels, so the
//! DNS server feeds it the labels of the wire name without building a string.

use std::{string::String, vec::Vec};

use crate::ids::{AppId, ContainerType, NetworkId, parse_index};

/// The zone, without its trailing dot.
pub const ZONE: &str = "private-network.internal";
const ZONE_LABELS: [&[u8]; 2] = [b"private-network", b"internal"];

/// Which containers of an app a name designates.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// The bare app name: its `web` containers.
    Web,
    Type(ContainerType),
    Container(ContainerType, u32),
}

impl Selector {
    /// The type the selector is about (`web` for the bare app name).
    pub fn ctype(&self) -> Option<&ContainerType> {
        match self {
            Selector::Web => None,
            Selector::Type(t) | Selector::Container(t, _) => Some(t),
        }
    }

    /// Whether the container `ctype`-`index` of the app is one this selector
    /// designates. The one home of the rule "the bare app name means its
    /// `web` containers".
    pub fn matches(&self, ctype: &ContainerType, index: u32) -> bool {
        match self {
            Selector::Web => ctype.as_str() == ContainerType::WEB,
            Selector::Type(t) => t == ctype,
            Selector::Container(t, i) => t == ctype && *i == index,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordQuery {
    pub network: NetworkId,
    pub app: AppId,
    pub selector: Selector,
}

/// What a queried name is, as far as pn is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneName {
    /// Not under the zone: to be forwarded upstream.
    Outside,
    /// `private-network.internal.` itself.
    Apex,
    /// `pn-Y.private-network.internal.`: a network's branch (it has no records
    /// of its own; it exists because the app names below it do).
    Network(NetworkId),
    Record(RecordQuery),
    /// Under the zone but not a name pn defines (bad id, wrong order, index 0,
    /// too many labels…). `network` is the `pn-` label next to the zone, when
    /// it parses: the server answers by the membership of that network.
    Invalid {
        network: Option<NetworkId>,
    },
}

fn eq_ci(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Parses a name given as its labels, most specific first (as on the wire).
pub fn parse_labels<'a, I>(labels: I) -> ZoneName
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: DoubleEndedIterator,
{
    let mut rev = labels.into_iter().rev();
    // The root label (a trailing dot) may or may not be there.
    let mut last = rev.next();
    if last.is_some_and(<[u8]>::is_empty) {
        last = rev.next();
    }
    match (last, rev.next()) {
        (Some(tld), Some(domain))
            if eq_ci(tld, ZONE_LABELS[1]) && eq_ci(domain, ZONE_LABELS[0]) => {}
        _ => return ZoneName::Outside,
    }
    let text = |l: &'a [u8]| core::str::from_utf8(l).ok();
    let Some(net_label) = rev.next() else {
        return ZoneName::Apex;
    };
    let Some(network) = text(net_label).and_then(|s| s.parse::<NetworkId>().ok()) else {
        return ZoneName::Invalid { network: None };
    };
    let invalid = ZoneName::Invalid {
        network: Some(network),
    };
    let Some(app_label) = rev.next() else {
        return ZoneName::Network(network);
    };
    let Some(app) = text(app_label).and_then(|s| s.parse::<AppId>().ok()) else {
        return invalid;
    };
    let selector = match (rev.next(), rev.next(), rev.next()) {
        (None, _, _) => Selector::Web,
        (Some(t), None, _) => match text(t).and_then(|s| s.parse().ok()) {
            Some(t) => Selector::Type(t),
            None => return invalid,
        },
        (Some(t), Some(n), None) => {
            match (
                text(t).and_then(|s| s.parse().ok()),
                text(n).and_then(|s| parse_index(s).ok()),
            ) {
                (Some(t), Some(n)) => Selector::Container(t, n),
                _ => return invalid,
            }
        }
        _ => return invalid,
    };
    ZoneName::Record(RecordQuery {
        network,
        app,
        selector,
    })
}

/// Parses a name in text form (`a.b.c` or `a.b.c.`).
pub fn parse(name: &str) -> ZoneName {
    if name.is_empty() {
        return ZoneName::Outside;
    }
    parse_labels(name.split('.').map(str::as_bytes))
}

/// `ap-X.pn-Y.private-network.internal.`
pub fn app_name(network: &NetworkId, app: &AppId) -> String {
    std::format!("{app}.{network}.{ZONE}.")
}

/// `TYPE.ap-X.pn-Y.private-network.internal.`
pub fn type_name(network: &NetworkId, app: &AppId, ctype: &ContainerType) -> String {
    std::format!("{ctype}.{app}.{network}.{ZONE}.")
}

/// `N.TYPE.ap-X.pn-Y.private-network.internal.`
pub fn container_name(
    network: &NetworkId,
    app: &AppId,
    ctype: &ContainerType,
    index: u32,
) -> String {
    std::format!("{index}.{ctype}.{app}.{network}.{ZONE}.")
}

/// Every name of an app's formation, as `scalingo private-networks-domain-names`
/// lists them: the app name (when it has `web` containers), then per type (in
/// name order) the type's name followed by each container's, by index.
pub fn formation_names<'a>(
    network: &NetworkId,
    app: &AppId,
    containers: impl IntoIterator<Item = (&'a ContainerType, u32)>,
) -> Vec<String> {
    let mut sorted: Vec<(&ContainerType, u32)> = containers.into_iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut out = Vec::with_capacity(sorted.len() * 2 + 1);
    if sorted.iter().any(|&(t, i)| Selector::Web.matches(t, i)) {
        out.push(app_name(network, app));
    }
    let mut current: Option<&ContainerType> = None;
    for (t, i) in sorted {
        if current != Some(t) {
            out.push(type_name(network, app, t));
            current = Some(t);
        }
        out.push(container_name(network, app, t, i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PN: &str = "pn-ad0fd6a1-d05e-40ea-bf63-c4f8a75a9d8c";
    const AP: &str = "ap-a71da13f-7c70-4c00-a644-eee8558d8053";

    fn net() -> NetworkId {
        PN.parse().unwrap()
    }
    fn app() -> AppId {
        AP.parse().unwrap()
    }
    fn t(s: &str) -> ContainerType {
        s.parse().unwrap()
    }
    fn rec(selector: Selector) -> ZoneName {
        ZoneName::Record(RecordQuery {
            network: net(),
            app: app(),
            selector,
        })
    }

    #[test]
    fn the_seed_examples() {
        let z = ZONE;
        assert_eq!(parse(&std::format!("{AP}.{PN}.{z}.")), rec(Selector::Web));
        assert_eq!(
            parse(&std::format!("web.{AP}.{PN}.{z}.")),
            rec(Selector::Type(t("web")))
        );
        assert_eq!(
            parse(&std::format!("1.web.{AP}.{PN}.{z}.")),
            rec(Selector::Container(t("web"), 1))
        );
        assert_eq!(
            parse(&std::format!("worker.{AP}.{PN}.{z}.")),
            rec(Selector::Type(t("worker")))
        );
        assert_eq!(
            parse(&std::format!("1.worker.{AP}.{PN}.{z}.")),
            rec(Selector::Container(t("worker"), 1))
        );
        assert_eq!(
            parse(&std::format!("myappbackend.{AP}.{PN}.{z}")),
            rec(Selector::Type(t("myappbackend"))),
            "trailing dot optional"
        );
    }

    #[test]
    fn case_does_not_matter() {
        let name = std::format!(
            "12.Worker.{}.{}.Private-Network.INTERNAL.",
            AP.to_uppercase(),
            PN
        );
        assert_eq!(parse(&name), rec(Selector::Container(t("worker"), 12)));
    }

    #[test]
    fn zone_levels() {
        assert_eq!(parse("private-network.internal."), ZoneName::Apex);
        assert_eq!(parse("PRIVATE-NETWORK.internal"), ZoneName::Apex);
        assert_eq!(
            parse(&std::format!("{PN}.private-network.internal.")),
            ZoneName::Network(net())
        );
        for outside in [
            "example.com.",
            "internal.",
            "network.internal.",
            "private-network.internal.example.com.",
            ".",
            "",
            "x.private-network.internal2.",
        ] {
            assert_eq!(parse(outside), ZoneName::Outside, "{outside}");
        }
    }

    #[test]
    fn rejections_inside_the_zone() {
        let z = ZONE;
        let bad_net = ZoneName::Invalid { network: None };
        let bad = ZoneName::Invalid {
            network: Some(net()),
        };
        for (name, want) in [
            (std::format!("foo.{z}."), &bad_net),
            (std::format!("{AP}.{z}."), &bad_net),
            (std::format!("{AP}.pn-123.{z}."), &bad_net),
            (std::format!("ap-123.{PN}.{z}."), &bad),
            (std::format!("{PN}.{AP}.{z}."), &bad_net),
            (std::format!("0.web.{AP}.{PN}.{z}."), &bad),
            (std::format!("01.web.{AP}.{PN}.{z}."), &bad),
            (std::format!("-1.web.{AP}.{PN}.{z}."), &bad),
            (std::format!("web.1.{AP}.{PN}.{z}."), &bad),
            (std::format!("1web.{AP}.{PN}.{z}."), &bad),
            (std::format!("we_b.{AP}.{PN}.{z}."), &bad),
            (std::format!("x.1.web.{AP}.{PN}.{z}."), &bad),
            (std::format!("{}.{AP}.{PN}.{z}.", "w".repeat(33)), &bad),
            (std::format!("..{AP}.{PN}.{z}."), &bad),
        ] {
            assert_eq!(&parse(&name), want, "{name}");
        }
        // Non-UTF-8 labels from the wire.
        let labels: [&[u8]; 5] = [
            b"\xff",
            AP.as_bytes(),
            PN.as_bytes(),
            b"private-network",
            b"internal",
        ];
        assert_eq!(parse_labels(labels), bad);
    }

    #[test]
    fn the_bare_app_name_selects_web_containers() {
        let (web, worker) = (t("web"), t("worker"));
        assert!(Selector::Web.matches(&web, 3));
        assert!(!Selector::Web.matches(&worker, 1));
        assert!(Selector::Type(worker.clone()).matches(&worker, 7));
        assert!(!Selector::Type(worker.clone()).matches(&web, 7));
        assert!(Selector::Container(web.clone(), 2).matches(&web, 2));
        assert!(!Selector::Container(web.clone(), 2).matches(&web, 1));
    }

    #[test]
    fn formation_lists_every_name_in_order() {
        let web = t("web");
        let worker = t("worker");
        let names = formation_names(
            &net(),
            &app(),
            [(&worker, 2), (&web, 1), (&worker, 1), (&web, 1)],
        );
        let z = ZONE;
        assert_eq!(
            names,
            [
                std::format!("{AP}.{PN}.{z}."),
                std::format!("web.{AP}.{PN}.{z}."),
                std::format!("1.web.{AP}.{PN}.{z}."),
                std::format!("worker.{AP}.{PN}.{z}."),
                std::format!("1.worker.{AP}.{PN}.{z}."),
                std::format!("2.worker.{AP}.{PN}.{z}."),
            ]
        );
        // Without web containers the bare app name designates nothing.
        let names = formation_names(&net(), &app(), [(&worker, 1)]);
        assert_eq!(names.len(), 2);
        assert!(formation_names(&net(), &app(), []).is_empty());
    }

    mod roundtrip {
        use proptest::prelude::*;

        use super::super::*;
        use crate::ids::Uuid;

        fn mixed_case(s: &str, mask: u64) -> String {
            s.chars()
                .enumerate()
                .map(|(i, c)| {
                    if mask >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect()
        }

        proptest! {
            #[test]
            fn format_then_parse(
                net_bytes in any::<[u8; 16]>(),
                app_bytes in any::<[u8; 16]>(),
                ctype in "[a-z][a-z0-9-]{0,31}",
                index in 1u32..,
                mask in any::<u64>(),
                dot in any::<bool>(),
            ) {
                let network = NetworkId(Uuid::from_random_bytes(net_bytes));
                let app = AppId(Uuid::from_random_bytes(app_bytes));
                let ctype: ContainerType = ctype.parse().unwrap();
                let cases = [
                    (app_name(&network, &app), Selector::Web),
                    (type_name(&network, &app, &ctype), Selector::Type(ctype.clone())),
                    (container_name(&network, &app, &ctype, index), Selector::Container(ctype.clone(), index)),
                ];
                for (name, selector) in cases {
                    let mut name = mixed_case(&name, mask);
                    if !dot {
                        name.pop();
                    }
                    prop_assert_eq!(
                        parse(&name),
                        ZoneName::Record(RecordQuery { network, app, selector })
                    );
                }
            }
        }
    }
}
