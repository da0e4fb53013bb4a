use super::prefix_end;

#[test]
fn range_ends() {
    assert_eq!(prefix_end(b"/pn/"), b"/pn0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
}

mod conformance {
    use std::sync::Arc;

    use crate::store::Backend;
    use crate::{store::etcd::Etcd, testing::etcd::EtcdServer};

    /// Each test gets its own etcd; the server lives as long as the backend
    /// (leaked into a holder that outlives the test body).
    async fn fresh(name: &str) -> Arc<dyn Backend> {
        let server = EtcdServer::start(name);
        let kv = Etcd::new(vec![server.endpoint.clone()], "/pn-test/".into());
        Arc::new(Held {
            kv,
            _server: server,
        })
    }

    struct Held {
        kv: Etcd,
        _server: EtcdServer,
    }

    impl Backend for Held {
        fn get<'a>(
            &'a self,
            key: &'a str,
        ) -> futures::future::BoxFuture<
            'a,
            Result<Option<crate::store::Entry>, crate::store::StoreError>,
        > {
            self.kv.get(key)
        }
        fn list<'a>(
            &'a self,
            prefix: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<crate::store::Listing, crate::store::StoreError>>
        {
            self.kv.list(prefix)
        }
        fn txn(
            &self,
            conds: Vec<crate::store::Cond>,
            ops: Vec<crate::store::Op>,
        ) -> futures::future::BoxFuture<'_, Result<Option<i64>, crate::store::StoreError>> {
            self.kv.txn(conds, ops)
        }
        fn watch<'a>(
            &'a self,
            prefix: &'a str,
            from_rev: i64,
        ) -> futures::future::BoxFuture<
            'a,
            Result<tokio::sync::mpsc::Receiver<crate::store::WatchEvent>, crate::store::StoreError>,
        > {
            self.kv.watch(prefix, from_rev)
        }
        fn describe(&self) -> String {
            self.kv.describe()
        }
    }

    crate::store_conformance_tests!(fresh);
    crate::store_placement_tests!(fresh);
    crate::store_lease_tests!(fresh);
    crate::store_conformance6_tests!(fresh);

    #[tokio::test]
    async fn big_stores_list_in_pages_and_watch_in_big_batches() {
        use crate::store::{Op, WatchEvent};
        let server = EtcdServer::start("pages");
        let kv = Etcd::new(vec![server.endpoint.clone()], "/pn-test/".into());
        let value = "v".repeat(1000);
        // 5 MB in all: more than one gRPC message, more than two pages.
        for batch in 0..50 {
            let ops = (0..100)
                .map(|i| Op::Put(format!("k/{:05}", batch * 100 + i), value.clone()))
                .collect();
            kv.txn(vec![], ops).await.unwrap();
        }
        let l = kv.list("k/").await.unwrap();
        assert_eq!(l.entries.len(), 5000);
        assert!(
            l.entries.windows(2).all(|w| w[0].0 < w[1].0),
            "in key order, no repeats"
        );
        // A watcher starting from the beginning catches up on all of it.
        let mut rx = kv.watch("k/", 1).await.unwrap();
        let mut n = 0;
        while n < 5000 {
            match tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv()).await {
                Ok(Some(WatchEvent::Put { .. })) => n += 1,
                other => panic!("after {n} events: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_outage_is_reported_and_survived() {
        use crate::store::{Op, StoreError};
        let server = EtcdServer::start("outage");
        let endpoint = server.endpoint.clone();
        let kv = Etcd::new(vec![endpoint], "/pn-test/".into());
        kv.txn(vec![], vec![Op::Put("a".into(), "1".into())])
            .await
            .unwrap();
        let mut rx = kv.watch("", 1).await.unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(crate::store::WatchEvent::Put { .. })
        ));
        drop(server);
        // The watch ends, requests fail fast with one line.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await;
        assert!(
            matches!(ended, Ok(None)),
            "watch should end when etcd goes away"
        );
        match kv.get("a").await {
            Err(StoreError::Unavailable(msg)) => {
                assert!(!msg.contains('\n') && msg.contains("etcd"), "{msg}")
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    /// etcd restarted under an agent: the connection the agent made before
    /// is dead, and a read on it is asked again on a new one rather than
    /// failing the command that needed it.
    #[tokio::test]
    async fn a_read_on_a_connection_that_died_is_asked_again() {
        use crate::store::Op;
        let mut server = EtcdServer::start("stale");
        let kv = Etcd::new(vec![server.endpoint.clone()], "/pn-test/".into());
        kv.txn(vec![], vec![Op::Put("a".into(), "1".into())])
            .await
            .unwrap();
        assert!(kv.get("a").await.unwrap().is_some());
        server.stop();
        server.restart();
        let again = kv.get("a").await;
        assert!(matches!(&again, Ok(Some(e)) if e.value == "1"), "{again:?}");
        let listed = kv.list("").await.unwrap();
        assert_eq!(listed.entries.len(), 1);
    }
}
