//! The store suite: every case runs against SQLite and PostgreSQL.

use std::io::Cursor;
use std::path::Path;

use futures_util::TryStreamExt;
use tidings::store::{Store, StoreError};
use tidings::subscribers::email_hash_hex;
use tidings::subscribers::model::{
    AddOutcome, BounceOutcome, ImportOptions, ImportReport, ListFilter, ListStats, NewSubscriber,
    RemoveOutcome, ResubscribeOutcome, Stats, Status, Subscriber, UnsubscribeOutcome,
};

use crate::common::Ctx;

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let ctx = crate::common::Ctx::new(crate::common::Kind::Sqlite).await;
                    super::$case(&ctx).await;
                    ctx.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL: run scripts/test.sh"]
                async fn $case() {
                    let ctx = crate::common::Ctx::new(crate::common::Kind::Postgres).await;
                    super::$case(&ctx).await;
                    ctx.cleanup().await;
                }
            )*
        }
    };
}

suite!(
    row_level_reasons,
    duplicates_across_batches,
    strict_leaves_the_store_untouched,
    dry_run_writes_nothing,
    unsubscribed_and_bounced_stay_so,
    remove_then_import,
    unsubscribe_by_hash_and_resubscribe,
    export_import_round_trip,
    non_ascii_names_and_addresses,
    u_and_a_label_domains_are_one_subscriber,
    second_import_is_idempotent,
    updates_are_counted_and_merged,
    recipients_stats_and_attribute_keys,
    add_updates_and_refuses,
    failed_read_writes_nothing,
    bulk_import_into_a_non_empty_store,
    who_may_be_mailed,
    bounces_and_complaints,
    claims_never_hand_out_a_blocked_row,
    hostile_values_round_trip,
);

fn options() -> ImportOptions {
    ImportOptions {
        source: "import:t.csv".into(),
        ..ImportOptions::default()
    }
}

fn with_lists(lists: &[&str]) -> ImportOptions {
    ImportOptions {
        lists: lists.iter().map(|l| l.to_string()).collect(),
        ..options()
    }
}

async fn import_bytes(
    store: &Store,
    bytes: Vec<u8>,
    options: ImportOptions,
) -> (ImportReport, Vec<String>) {
    let mut skipped = Vec::new();
    let report = store
        .import(
            Box::new(Cursor::new(bytes)),
            Path::new("t.csv"),
            options,
            &mut |s| skipped.push(s.to_string()),
        )
        .await
        .expect("import");
    (report, skipped)
}

async fn import(store: &Store, text: &str, options: ImportOptions) -> (ImportReport, Vec<String>) {
    import_bytes(store, text.as_bytes().to_vec(), options).await
}

async fn all(store: &Store) -> Vec<Subscriber> {
    store
        .list(ListFilter::default())
        .try_collect()
        .await
        .expect("list")
}

async fn export(store: &Store) -> String {
    let mut out = Vec::new();
    store
        .export(&mut out, ListFilter::default())
        .await
        .expect("export");
    String::from_utf8(out).unwrap()
}

fn report(
    rows: u64,
    [
        new,
        updated,
        unchanged,
        kept_unsubscribed,
        kept_bounced,
        suppressed,
        skipped,
    ]: [u64; 7],
    written: bool,
) -> ImportReport {
    ImportReport {
        rows,
        new,
        updated,
        unchanged,
        kept_unsubscribed,
        kept_bounced,
        suppressed,
        skipped,
        written,
    }
}

const BASE: &str = "email,first_name,last_name,city\n\
                    ana@example.org,Ana,Lima,Portland\n\
                    bob@example.org,Bob,Stone,Bangor\n\
                    cy@example.org,Cy,Young,Saco\n";

async fn row_level_reasons(ctx: &Ctx) {
    let mut bytes = format!(
        "email,first_name,last_name,city,lists,status\n\
         ana@example.org,Ana,Lima,Portland,monthly,\n\
         bad@,B,B,x,,\n\
         ,Empty,Row,x,,\n\
         ANA@Example.org,Ana,Again,x,,\n\
         carla@example.org,Carla,Short\n\
         \"dan@example.org\",\"Da\nn\",Smith,x,,\n\
         erin@example.org,Erin,Long,{},,\n\
         fay@example.org,Fay,Status,x,,gone\n\
         gus@example.org,Gus,Lists,x,\"a;b,c\",\n\
         hal@example.org,Hal,Ok,\"Bangor\nMaine\",,\n",
        "x".repeat(1001)
    )
    .into_bytes();
    bytes.extend(b"jo\xffe@example.org,Jo,Latin1,x,,\n");
    bytes.extend(b"ivy@example.org,Ivy,Ok,,,unsubscribed\n");
    let (r, skipped) = import_bytes(&ctx.store, bytes, options()).await;
    assert_eq!(
        skipped,
        [
            "line 3: invalid email address \"bad@\": nothing after the @",
            "line 4: empty email address",
            "line 5: duplicate of line 2 (ana@example.org)",
            "line 6: 3 fields, the header has 6",
            "line 7: first_name contains a line break",
            "line 9: city is longer than 1000 characters",
            "line 10: status \"gone\" is not one of active, unsubscribed, bounced",
            "line 11: list name \"b,c\" contains ';', ',' or a control character",
            "line 14: not valid UTF-8: save the file as UTF-8",
        ]
    );
    assert_eq!(r, report(12, [3, 0, 0, 0, 0, 0, 9], true));
    let people = all(&ctx.store).await;
    let emails: Vec<_> = people.iter().map(|s| s.email.as_str()).collect();
    assert_eq!(
        emails,
        ["ana@example.org", "hal@example.org", "ivy@example.org"]
    );
    assert_eq!(people[0].lists, ["monthly"]);
    assert_eq!(people[1].attributes["city"], "Bangor\nMaine");
    assert_eq!(people[2].status, Status::Unsubscribed);
    assert!(people[2].unsubscribed_at.is_some());
}

async fn duplicates_across_batches(ctx: &Ctx) {
    // More rows than one batch, so the duplicate is found through the
    // database, not the batch in memory.
    let mut text = String::from("email,n\n");
    for i in 0..4500 {
        if i == 4098 {
            text.push_str("User1@Example.org,dup\n");
        } else {
            text.push_str(&format!("user{i}@example.org,{i}\n"));
        }
    }
    let (r, skipped) = import(&ctx.store, &text, options()).await;
    // user1 is on line 3 (header, user0, user1); the duplicate on line 4100.
    assert_eq!(
        skipped,
        ["line 4100: duplicate of line 3 (user1@example.org)"]
    );
    assert_eq!(r, report(4500, [4499, 0, 0, 0, 0, 0, 1], true));
    let (r, skipped) = import(&ctx.store, &text, options()).await;
    assert_eq!(skipped.len(), 1);
    assert_eq!(r, report(4500, [0, 0, 4499, 0, 0, 0, 1], true));
}

async fn strict_leaves_the_store_untouched(ctx: &Ctx) {
    import(&ctx.store, BASE, with_lists(&["monthly"])).await;
    let before = all(&ctx.store).await;
    let stats = ctx.store.stats().await.unwrap();
    let events = ctx.store.events("ana@example.org").await.unwrap();
    let changed = "email,first_name,last_name,city\n\
                   ana@example.org,Anna,Lima,Portland\n\
                   new@example.org,New,One,Saco\n\
                   broken@,X,Y,Z\n";
    let strict = ImportOptions {
        strict: true,
        ..with_lists(&["events"])
    };
    let (r, skipped) = import(&ctx.store, changed, strict).await;
    assert_eq!(
        skipped,
        ["line 4: invalid email address \"broken@\": nothing after the @"]
    );
    assert_eq!(r, report(3, [1, 1, 0, 0, 0, 0, 1], false));
    assert_eq!(all(&ctx.store).await, before);
    assert_eq!(ctx.store.stats().await.unwrap(), stats);
    assert_eq!(ctx.store.events("ana@example.org").await.unwrap(), events);
    assert!(ctx.store.get("new@example.org").await.unwrap().is_none());
    // The rolled-back import left nothing behind on its connection.
    let (r, _) = import(
        &ctx.store,
        &changed.replace("broken@", "ok@example.org"),
        options(),
    )
    .await;
    assert_eq!(r, report(3, [2, 1, 0, 0, 0, 0, 0], true));
}

async fn dry_run_writes_nothing(ctx: &Ctx) {
    let dry = ImportOptions {
        dry_run: true,
        ..with_lists(&["monthly"])
    };
    let (r, _) = import(&ctx.store, BASE, dry.clone()).await;
    assert_eq!(r, report(3, [3, 0, 0, 0, 0, 0, 0], false));
    assert!(all(&ctx.store).await.is_empty());
    assert_eq!(ctx.store.stats().await.unwrap(), Stats::default());
    import(&ctx.store, BASE, options()).await;
    let before = all(&ctx.store).await;
    let (r, _) = import(&ctx.store, BASE, dry).await;
    // Adding a list is a change, but not made.
    assert_eq!(r, report(3, [0, 3, 0, 0, 0, 0, 0], false));
    assert_eq!(all(&ctx.store).await, before);
}

async fn unsubscribed_and_bounced_stay_so(ctx: &Ctx) {
    import(&ctx.store, BASE, with_lists(&["monthly"])).await;
    let s = &ctx.store;
    assert_eq!(
        s.unsubscribe(" ANA@example.org ", "link").await.unwrap(),
        UnsubscribeOutcome::Unsubscribed
    );
    assert_eq!(
        s.unsubscribe("ana@example.org", "link").await.unwrap(),
        UnsubscribeOutcome::AlreadyUnsubscribed
    );
    assert_eq!(
        s.mark_bounced(
            "bob@example.org",
            "550 5.1.1 <Bob@Example.org>: no such user"
        )
        .await
        .unwrap(),
        BounceOutcome::Bounced
    );
    let ana_before = s.get("ana@example.org").await.unwrap().unwrap();
    // Even a file that says `active`, with new names, changes nothing for them.
    let again = "email,first_name,last_name,city,status\n\
                 ana@example.org,Ana,Changed,Portland,active\n\
                 bob@example.org,Bob,Changed,Bangor,active\n\
                 cy@example.org,Cy,Young,Saco,\n";
    let (r, _) = import(s, again, with_lists(&["monthly", "events"])).await;
    assert_eq!(r, report(3, [0, 1, 0, 1, 1, 0, 0], true));
    assert_eq!(s.get("ana@example.org").await.unwrap().unwrap(), ana_before);
    let bob = s.get("bob@example.org").await.unwrap().unwrap();
    assert_eq!(
        (bob.status, bob.last_name.as_str()),
        (Status::Bounced, "Stone")
    );

    let add = |email: &str| NewSubscriber {
        email: email.into(),
        ..NewSubscriber::default()
    };
    assert_eq!(
        s.add(&add("ana@example.org"), "add", false).await.unwrap(),
        AddOutcome::Unsubscribed {
            since: ana_before.unsubscribed_at.clone()
        }
    );
    assert_eq!(
        s.add(&add("bob@example.org"), "add", false).await.unwrap(),
        AddOutcome::Bounced
    );
    let recipients: Vec<String> = s
        .recipients(None)
        .map_ok(|(_, r)| r.email)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(recipients, ["cy@example.org"]);

    // A deliberate re-subscription works, and is on record.
    let id = ana_before.id;
    assert_eq!(
        s.add(&add("ana@example.org"), "add", true).await.unwrap(),
        AddOutcome::Resubscribed { id }
    );
    let ana = s.get("ana@example.org").await.unwrap().unwrap();
    assert_eq!((ana.status, ana.unsubscribed_at), (Status::Active, None));
    let events: Vec<(String, String)> = s
        .events("ana@example.org")
        .await
        .unwrap()
        .into_iter()
        .map(|(e, src, _)| (e, src))
        .collect();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        events,
        pairs(&[
            ("imported", "import:t.csv"),
            ("unsubscribed", "link"),
            ("resubscribed", "add"),
        ])
    );
    let bob_events = s.events("bob@example.org").await.unwrap();
    assert_eq!(bob_events[1].0, "bounced");
    assert_eq!(
        bob_events[1].1,
        "bounce: 550 5.1.1 <<address>>: no such user"
    );
    assert_eq!(
        s.mark_bounced("ana@example.org", "x").await.unwrap(),
        BounceOutcome::Bounced
    );
    assert_eq!(
        s.mark_bounced("nobody@example.org", "x").await.unwrap(),
        BounceOutcome::Suppressed
    );
    assert_eq!(
        s.mark_bounced("Nobody@Example.org", "x").await.unwrap(),
        BounceOutcome::AlreadySuppressed
    );
}

async fn remove_then_import(ctx: &Ctx) {
    let s = &ctx.store;
    import(s, BASE, with_lists(&["monthly"])).await;
    assert_eq!(
        s.remove("Ana@Example.org", "remove").await.unwrap(),
        RemoveOutcome::Removed
    );
    assert!(s.get("ana@example.org").await.unwrap().is_none());
    assert_eq!(
        s.suppression("ana@example.org").await.unwrap().as_deref(),
        Some("removed")
    );
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.active, stats.suppressed), (2, 1));
    assert_eq!(
        stats.lists[0].active, 2,
        "the list membership went with the row"
    );

    let (r, _) = import(s, BASE, with_lists(&["monthly"])).await;
    assert_eq!(r, report(3, [0, 0, 2, 0, 0, 1, 0], true));
    assert!(s.get("ana@example.org").await.unwrap().is_none());
    let new = NewSubscriber {
        email: "ana@example.org".into(),
        ..NewSubscriber::default()
    };
    for resubscribe in [false, true] {
        match s.add(&new, "add", resubscribe).await.unwrap() {
            AddOutcome::Suppressed { reason, .. } => assert_eq!(reason, "removed"),
            other => panic!("a removed person was added back: {other:?}"),
        }
    }
    // Only the hash is left, in the events too.
    let events: Vec<String> = s
        .events("ana@example.org")
        .await
        .unwrap()
        .into_iter()
        .map(|(e, _, _)| e)
        .collect();
    assert_eq!(events, ["imported", "removed"]);
    assert_eq!(
        s.remove("nobody@example.org", "remove").await.unwrap(),
        RemoveOutcome::NotFound
    );
    assert_eq!(
        s.suppression("nobody@example.org")
            .await
            .unwrap()
            .as_deref(),
        Some("removed")
    );
}

async fn unsubscribe_by_hash_and_resubscribe(ctx: &Ctx) {
    let s = &ctx.store;
    import(s, BASE, options()).await;
    let ana = email_hash_hex("ana@example.org");
    assert_eq!(
        s.unsubscribe_by_hash(&ana, "one-click").await.unwrap(),
        UnsubscribeOutcome::Unsubscribed
    );
    assert_eq!(
        s.unsubscribe_by_hash(&ana.to_uppercase(), "one-click")
            .await
            .unwrap(),
        UnsubscribeOutcome::AlreadyUnsubscribed
    );
    assert_eq!(
        s.resubscribe_by_hash(&ana, "link").await.unwrap(),
        ResubscribeOutcome::Resubscribed
    );
    assert_eq!(
        s.resubscribe_by_hash(&ana, "link").await.unwrap(),
        ResubscribeOutcome::AlreadyActive
    );
    // Someone not in the store stays out once they unsubscribed.
    let zed = email_hash_hex("zed@example.org");
    assert_eq!(
        s.unsubscribe_by_hash(&zed, "one-click").await.unwrap(),
        UnsubscribeOutcome::Suppressed
    );
    assert_eq!(
        s.unsubscribe_by_hash(&zed, "one-click").await.unwrap(),
        UnsubscribeOutcome::AlreadySuppressed
    );
    let with_zed = format!("{BASE}zed@example.org,Zed,Z,Nowhere\n");
    let (r, _) = import(s, &with_zed, options()).await;
    assert_eq!(r, report(4, [0, 0, 3, 0, 0, 1, 0], true));
    let zed_new = NewSubscriber {
        email: "zed@example.org".into(),
        ..NewSubscriber::default()
    };
    assert!(matches!(
        s.add(&zed_new, "add", false).await.unwrap(),
        AddOutcome::Suppressed { reason, .. } if reason == "unsubscribed"
    ));
    // Asking to come back lifts an unsubscribe-only suppression.
    assert_eq!(
        s.resubscribe_by_hash(&zed, "link").await.unwrap(),
        ResubscribeOutcome::NotFound
    );
    let (r, _) = import(s, &with_zed, options()).await;
    assert_eq!(r, report(4, [1, 0, 3, 0, 0, 0, 0], true));
    s.mark_bounced("bob@example.org", "550").await.unwrap();
    assert_eq!(
        s.resubscribe_by_hash(&email_hash_hex("bob@example.org"), "link")
            .await
            .unwrap(),
        ResubscribeOutcome::Bounced
    );
    let err = s.unsubscribe_by_hash("abc", "x").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "`abc` is not an address hash (64 hexadecimal digits)"
    );
}

async fn export_import_round_trip(ctx: &Ctx) {
    let text = "Email,First_Name,Last_Name,City,Note,Lists,Status\n\
                ana@example.org,Ana,Lima,Portland,\"says \"\"hi\"\", twice\",monthly;events,active\n\
                Bjorn@Example.org,Björn,Åkesson,Bangor,\"two\nlines\",monthly,unsubscribed\n\
                dmitri@example.org,Дмитрий,Соколов,,,events,bounced\n\
                hiro@example.org,宏,佐藤,Biddeford,,,\n";
    let (r, skipped) = import(&ctx.store, text, options()).await;
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(r.new, 4);
    let exported = export(&ctx.store).await;
    assert_eq!(
        exported,
        "email,first_name,last_name,city,note,lists,status\n\
         ana@example.org,Ana,Lima,Portland,\"says \"\"hi\"\", twice\",events;monthly,active\n\
         Bjorn@Example.org,Björn,Åkesson,Bangor,\"two\nlines\",monthly,unsubscribed\n\
         dmitri@example.org,Дмитрий,Соколов,,,events,bounced\n\
         hiro@example.org,宏,佐藤,Biddeford,,,active\n"
    );
    let fresh = ctx.fresh().await;
    let (r, skipped) = import(&fresh, &exported, options()).await;
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(r, report(4, [4, 0, 0, 0, 0, 0, 0], true));
    assert_eq!(export(&fresh).await, exported);
    let strip = |v: Vec<Subscriber>| -> Vec<Subscriber> {
        v.into_iter()
            .map(|s| Subscriber {
                id: 0,
                created_at: String::new(),
                updated_at: String::new(),
                unsubscribed_at: s.unsubscribed_at.map(|_| "set".into()),
                ..s
            })
            .collect()
    };
    assert_eq!(strip(all(&fresh).await), strip(all(&ctx.store).await));
    // And back into the original: nothing to do.
    let (r, _) = import(&ctx.store, &exported, options()).await;
    assert_eq!(r, report(4, [0, 0, 2, 1, 1, 0, 0], true));
}

async fn non_ascii_names_and_addresses(ctx: &Ctx) {
    let s = &ctx.store;
    let sample = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("subscribers/sample.csv"),
    )
    .unwrap();
    let (r, _) = import(s, &sample, options()).await;
    assert_eq!(r, report(10, [10, 0, 0, 0, 0, 0, 0], true));
    let d = s.get("DMITRI@example.org").await.unwrap().unwrap();
    assert_eq!(
        (d.first_name.as_str(), d.last_name.as_str()),
        ("Дмитрий", "Соколов")
    );
    let h = s.get("hiro@example.org").await.unwrap().unwrap();
    assert_eq!(h.recipient().full_name(), "宏 佐藤");
    let new = NewSubscriber {
        email: " ÅSA@Bücher.Example ".into(),
        first_name: Some("Åsa".into()),
        ..NewSubscriber::default()
    };
    assert!(matches!(
        s.add(&new, "add", false).await.unwrap(),
        AddOutcome::Added { .. }
    ));
    let asa = s.get("åsa@bücher.example").await.unwrap().unwrap();
    assert_eq!(asa.email, "ÅSA@Bücher.Example");
    assert_eq!(asa.email_key, "åsa@bücher.example");
    assert_eq!(asa.email_hash, email_hash_hex("åsa@bücher.example"));
    let (r, _) = import(s, &sample, options()).await;
    assert_eq!(r.unchanged, 10);
}

/// `bücher.example` and its A-label `xn--bcher-kva.example` are one domain:
/// one subscriber, one hash for links and suppressions.
async fn u_and_a_label_domains_are_one_subscriber(ctx: &Ctx) {
    let s = &ctx.store;
    let (r, _) = import(s, "email,first_name\nuser@bücher.example,Ute\n", options()).await;
    assert_eq!(r, report(1, [1, 0, 0, 0, 0, 0, 0], true));
    let (r, _) = import(
        s,
        "email,first_name,city\nUser@XN--BCHER-KVA.example,Ute,Berlin\n",
        options(),
    )
    .await;
    assert_eq!(r, report(1, [0, 1, 0, 0, 0, 0, 0], true));
    let people = all(s).await;
    assert_eq!(people.len(), 1, "{people:?}");
    // As written by the latest import, like any other change of spelling.
    assert_eq!(people[0].email, "User@XN--BCHER-KVA.example");
    assert_eq!(people[0].email_key, "user@bücher.example");
    assert_eq!(people[0].attributes["city"], "Berlin");
    assert_eq!(
        email_hash_hex("user@xn--bcher-kva.example"),
        email_hash_hex("user@bücher.example")
    );
    // Both forms in one file: the second is a duplicate of the first.
    let (r, skipped) = import(
        s,
        "email\nanna@xn--bcher-kva.example\nanna@bücher.example\n",
        options(),
    )
    .await;
    assert_eq!(r, report(2, [1, 0, 0, 0, 0, 0, 1], true));
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    // Unsubscribing either form reaches the person.
    assert_eq!(
        s.unsubscribe("user@xn--bcher-kva.example", "t")
            .await
            .unwrap(),
        UnsubscribeOutcome::Unsubscribed
    );
    let ute = s.get("USER@bücher.example").await.unwrap().unwrap();
    assert_eq!(ute.status, Status::Unsubscribed);
}

async fn second_import_is_idempotent(ctx: &Ctx) {
    let s = &ctx.store;
    let text = "email,name,city,lists\n\
                ana@example.org,Ana Lima,Portland,monthly\n\
                bob@example.org,Bob,,events;monthly\n";
    let (r, _) = import(s, text, with_lists(&["all"])).await;
    assert_eq!(r, report(2, [2, 0, 0, 0, 0, 0, 0], true));
    let first = all(s).await;
    let events = s.events("bob@example.org").await.unwrap();
    let (r, _) = import(s, text, with_lists(&["all"])).await;
    assert_eq!(r, report(2, [0, 0, 2, 0, 0, 0, 0], true));
    assert_eq!(all(s).await, first);
    assert_eq!(s.events("bob@example.org").await.unwrap(), events);
    assert_eq!(first[1].lists, ["all", "events", "monthly"]);
    assert_eq!(
        (first[1].first_name.as_str(), first[1].last_name.as_str()),
        ("Bob", "")
    );
}

async fn updates_are_counted_and_merged(ctx: &Ctx) {
    let s = &ctx.store;
    import(
        s,
        "email,first_name,city,plan\n\
         ana@example.org,Ana,Portland,gold\n\
         bob@example.org,Bob,Bangor,\n\
         cy@example.org,Cy,Saco,\n",
        options(),
    )
    .await;
    // No name columns: names are kept. An empty cell removes that attribute.
    let (r, _) = import(
        s,
        "email,city,plan,lists,status\n\
         Ana@Example.org,Portland,,monthly,\n\
         bob@example.org,Bangor,,,\n\
         cy@example.org,Saco,,,unsubscribed\n\
         dee@example.org,Biddeford,,,\n",
        options(),
    )
    .await;
    assert_eq!(r, report(4, [1, 2, 1, 0, 0, 0, 0], true));
    let ana = s.get("ana@example.org").await.unwrap().unwrap();
    assert_eq!(ana.email, "Ana@Example.org");
    assert_eq!(ana.first_name, "Ana");
    assert_eq!(
        ana.attributes.into_iter().collect::<Vec<_>>(),
        [("city".to_string(), "Portland".to_string())]
    );
    assert_eq!(ana.lists, ["monthly"]);
    let cy = s.get("cy@example.org").await.unwrap().unwrap();
    assert_eq!(cy.status, Status::Unsubscribed);
    assert!(cy.unsubscribed_at.is_some());
    let events: Vec<String> = s
        .events("cy@example.org")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(events, ["imported", "unsubscribed"]);
    let events: Vec<String> = s
        .events("ana@example.org")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(events, ["imported", "updated"]);
}

async fn recipients_stats_and_attribute_keys(ctx: &Ctx) {
    let s = &ctx.store;
    let mut text = String::from("email,first_name,city,zip,lists\n");
    for i in 0..1203 {
        let lists = if i % 3 == 0 {
            "monthly;events"
        } else {
            "monthly"
        };
        let zip = if i == 7 { "04101" } else { "" };
        text.push_str(&format!("p{i:04}@example.org,P{i},Town{i},{zip},{lists}\n"));
    }
    import(s, &text, options()).await;
    s.unsubscribe("p0000@example.org", "link").await.unwrap();
    s.mark_bounced("p0001@example.org", "550").await.unwrap();
    s.remove("p0002@example.org", "remove").await.unwrap();
    let ids: Vec<(i64, String)> = s
        .recipients(None)
        .map_ok(|(id, r)| (id, r.email))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids.len(), 1200, "walks every page");
    assert!(ids.windows(2).all(|w| w[0].0 < w[1].0), "ordered by id");
    assert_eq!(ids[0].1, "p0003@example.org");
    let events: Vec<(i64, tidings::subscribers::Recipient)> =
        s.recipients(Some("events")).try_collect().await.unwrap();
    assert_eq!(events.len(), 400);
    assert_eq!(events[0].1.email, "p0003@example.org");
    assert_eq!(events[0].1.first_name, "P3");
    assert_eq!(events[0].1.attributes["city"], "Town3");
    assert_eq!(
        s.stats().await.unwrap(),
        Stats {
            active: 1200,
            unsubscribed: 1,
            bounced: 1,
            suppressed: 1,
            suppressed_by: vec![("removed".into(), 1)],
            lists: vec![
                ListStats {
                    list: "events".into(),
                    active: 400,
                    unsubscribed: 1,
                    bounced: 0,
                },
                ListStats {
                    list: "monthly".into(),
                    active: 1200,
                    unsubscribed: 1,
                    bounced: 1,
                },
            ],
        }
    );
    assert_eq!(s.attribute_keys().await.unwrap(), ["city", "zip"]);
    let unsubscribed: Vec<Subscriber> = s
        .list(ListFilter {
            status: Some(Status::Unsubscribed),
            list: Some("events".into()),
        })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(unsubscribed.len(), 1);
    assert_eq!(unsubscribed[0].email, "p0000@example.org");
}

async fn add_updates_and_refuses(ctx: &Ctx) {
    let s = &ctx.store;
    let mut new = NewSubscriber {
        email: "ana@example.org".into(),
        first_name: Some("Ana".into()),
        attributes: [("city".to_string(), "Portland".to_string())].into(),
        lists: vec!["monthly".into()],
        ..NewSubscriber::default()
    };
    let AddOutcome::Added { id } = s.add(&new, "add", false).await.unwrap() else {
        panic!("not added")
    };
    assert_eq!(
        s.add(&new, "add", false).await.unwrap(),
        AddOutcome::Unchanged { id }
    );
    new.attributes.insert("city".into(), "Bangor".into());
    new.first_name = None;
    assert_eq!(
        s.add(&new, "add", false).await.unwrap(),
        AddOutcome::Updated { id }
    );
    let ana = s.get("ana@example.org").await.unwrap().unwrap();
    assert_eq!(
        (
            ana.first_name.as_str(),
            ana.attributes["city"].as_str(),
            ana.source.as_str()
        ),
        ("Ana", "Bangor", "add")
    );
    let invalid = |email: &str, first: &str| NewSubscriber {
        email: email.into(),
        first_name: Some(first.into()),
        ..NewSubscriber::default()
    };
    let err = s
        .add(&invalid("nope", "N"), "add", false)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));
    assert_eq!(err.to_string(), "invalid email address \"nope\": no @");
    let err = s
        .add(
            &invalid("n@example.org", "N\r\nBcc: x@evil.example"),
            "add",
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "first_name contains a line break");
}

/// Big enough for the bulk path (on SQLite: ids up front, address indexes
/// dropped and rebuilt), into a store that already has people in it.
async fn bulk_import_into_a_non_empty_store(ctx: &Ctx) {
    let s = &ctx.store;
    let file = |from: usize, to: usize| {
        let mut text = String::from("email,first_name,lists\n");
        for i in from..to {
            text.push_str(&format!(
                "u{i}@example.org,U{i},{}\n",
                if i % 2 == 0 { "a;b" } else { "a" }
            ));
        }
        text
    };
    let (r, _) = import(s, &file(0, 21_000), options()).await;
    assert_eq!(r, report(21_000, [21_000, 0, 0, 0, 0, 0, 0], true));
    s.unsubscribe("u5@example.org", "link").await.unwrap();
    s.remove("u6@example.org", "remove").await.unwrap();
    // Overlaps the first file by 1,000 rows, adds 41,000.
    let (r, _) = import(s, &file(20_000, 62_000), options()).await;
    assert_eq!(r, report(42_000, [41_000, 0, 1_000, 0, 0, 0, 0], true));
    let (r, _) = import(s, &file(0, 10), options()).await;
    assert_eq!(r, report(10, [0, 0, 8, 1, 0, 1, 0], true));
    // The rebuilt indexes are there and unique: the same person, not a new row.
    let before = s.get("u61999@example.org").await.unwrap().unwrap();
    let new = NewSubscriber {
        email: "U61999@Example.org".into(),
        ..NewSubscriber::default()
    };
    assert_eq!(
        s.add(&new, "add", false).await.unwrap(),
        AddOutcome::Updated { id: before.id }
    );
    assert_eq!(
        s.unsubscribe_by_hash(&email_hash_hex("u40000@example.org"), "one-click")
            .await
            .unwrap(),
        UnsubscribeOutcome::Unsubscribed
    );
    let stats = s.stats().await.unwrap();
    assert_eq!(
        (stats.active, stats.unsubscribed, stats.suppressed),
        (61_997, 2, 1)
    );
    assert_eq!(stats.lists[0].list, "a");
    assert_eq!(stats.lists[0].active + stats.lists[0].unsubscribed, 61_999);
    assert_eq!(stats.lists[1].active + stats.lists[1].unsubscribed, 30_999);
    let ids: Vec<i64> = s
        .recipients(None)
        .map_ok(|(id, _)| id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids.len(), 61_997);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let u20000 = s.get("u20000@example.org").await.unwrap().unwrap();
    assert_eq!(
        (u20000.first_name.as_str(), u20000.lists.len()),
        ("U20000", 2)
    );
    assert_eq!(s.events("u40000@example.org").await.unwrap().len(), 2);
}

/// Values that mean something to a bulk format (PostgreSQL's COPY text:
/// tab, newline, backslash, `\N`, `\.`) or to CSV (quotes, commas), and
/// non-ASCII, go in and come out as they were; an empty cell is an empty
/// value, not a missing one.
async fn hostile_values_round_trip(ctx: &Ctx) {
    let text = "email,first_name,last_name,note,path,lists\n\
                tab@example.org,Tab,O'Brien,\"a<TAB>b\",\"C:\\dir\\new\",monthly\n\
                nl@example.org,\\N,\"Quote \"\"q\"\", comma\",\"line1\nline2\r\nline3\",\\N,\n\
                bs@example.org,Zoë,Ørsted\\,\"\\.\",\"back\\\\slash\\t<TAB>end\",\"a;b\"\n\
                empty@example.org,,,,,\n\
                bad@example.org,\"x<TAB>y\",,,,\n\
                ctl@example.org,C,D,\"bell<BEL>\\r\",\"\\\\N\",x\n"
        .replace("<TAB>", "\t")
        .replace("<BEL>", "\u{7}");
    let (r, skipped) = import(&ctx.store, &text, options()).await;
    assert_eq!(
        skipped,
        ["line 8: first_name contains a control character"],
        "{r:?}"
    );
    assert_eq!(r, report(6, [5, 0, 0, 0, 0, 0, 1], true));
    let nl = ctx.store.get("nl@example.org").await.unwrap().unwrap();
    assert_eq!(
        (nl.first_name.as_str(), nl.last_name.as_str()),
        ("\\N", "Quote \"q\", comma")
    );
    assert_eq!(nl.attributes["note"], "line1\nline2\r\nline3");
    assert_eq!(nl.attributes["path"], "\\N");
    assert!(nl.lists.is_empty());
    let bs = ctx.store.get("bs@example.org").await.unwrap().unwrap();
    assert_eq!(bs.last_name, "Ørsted\\");
    assert_eq!(bs.attributes["note"], "\\.");
    assert_eq!(bs.attributes["path"], "back\\\\slash\\t\tend");
    assert_eq!(bs.lists, ["a", "b"]);
    let ctl = ctx.store.get("ctl@example.org").await.unwrap().unwrap();
    assert_eq!(ctl.attributes["note"], "bell\u{7}\\r");
    let tab = ctx.store.get("tab@example.org").await.unwrap().unwrap();
    assert_eq!(tab.attributes["note"], "a\tb");
    assert_eq!(tab.attributes["path"], "C:\\dir\\new");
    let empty = ctx.store.get("empty@example.org").await.unwrap().unwrap();
    assert_eq!((empty.first_name.as_str(), empty.attributes.len()), ("", 0));

    // Out and into a fresh store: the same export, byte for byte.
    let exported = export(&ctx.store).await;
    let fresh = ctx.fresh().await;
    let (r, skipped) = import(&fresh, &exported, options()).await;
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(r, report(5, [5, 0, 0, 0, 0, 0, 0], true));
    assert_eq!(export(&fresh).await, exported);

    // An empty name cell clears the name; a file without the column keeps it.
    let (r, _) = import(&fresh, "email,first_name\ntab@example.org,\n", options()).await;
    assert_eq!(r, report(1, [0, 1, 0, 0, 0, 0, 0], true));
    let (r, _) = import(&fresh, "email,note\nbs@example.org,x\n", options()).await;
    assert_eq!(r, report(1, [0, 1, 0, 0, 0, 0, 0], true));
    let tab = fresh.get("tab@example.org").await.unwrap().unwrap();
    assert_eq!(
        (tab.first_name.as_str(), tab.last_name.as_str()),
        ("", "O'Brien")
    );
    let bs = fresh.get("bs@example.org").await.unwrap().unwrap();
    assert_eq!(
        (bs.first_name.as_str(), bs.attributes["note"].as_str()),
        ("Zoë", "x")
    );
}

/// A reader that fails part-way, like a file on a disk that goes away.
struct FailingReader {
    data: Cursor<Vec<u8>>,
}

impl std::io::Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.read(buf)?;
        if n == 0 {
            return Err(std::io::Error::other("device went away"));
        }
        Ok(n)
    }
}

async fn failed_read_writes_nothing(ctx: &Ctx) {
    let mut text = String::from("email\n");
    for i in 0..5000 {
        text.push_str(&format!("user{i}@example.org\n"));
    }
    let reader = FailingReader {
        data: Cursor::new(text.into_bytes()),
    };
    let err = ctx
        .store
        .import(
            Box::new(reader),
            Path::new("big.csv"),
            options(),
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "cannot read big.csv: device went away");
    assert!(all(&ctx.store).await.is_empty(), "nothing half-written");
}

// Database-specific behaviour.

#[tokio::test]
async fn sqlite_locked_database_is_reported_and_nothing_written() {
    use sqlx::Connection;
    let ctx = Ctx::new(crate::common::Kind::Sqlite).await;
    import(&ctx.store, BASE, options()).await;
    let path = ctx.sqlite_path();
    let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let driver = tidings::store::sqlite::SqliteDriver::open_with(
        &path,
        std::time::Duration::from_millis(200),
    )
    .await
    .unwrap();
    let other = Store::from_driver(Box::new(driver));
    let err = other
        .import(
            Box::new(Cursor::new(b"email\nnew@example.org\n".to_vec())),
            Path::new("t.csv"),
            options(),
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "database {} is locked by another process: wait for it to finish or stop it",
            path.display()
        )
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    assert!(other.get("new@example.org").await.unwrap().is_none());
    assert_eq!(all(&other).await.len(), 3);
    ctx.cleanup().await;
}

#[tokio::test]
async fn sqlite_cannot_open_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "not a folder").unwrap();
    let err = Store::open("sqlite:file/sub.db", dir.path())
        .await
        .unwrap_err();
    let text = err.to_string();
    let db = dir.path().join("file/sub.db");
    assert!(
        text.starts_with(&format!(
            "cannot open SQLite database {}: cannot create folder",
            db.display()
        )),
        "{text}"
    );
    assert!(
        text.ends_with("(check the folder exists and is writable)"),
        "{text}"
    );

    std::fs::write(dir.path().join("junk.db"), vec![b'x'; 4096]).unwrap();
    let err = Store::open("sqlite:junk.db", dir.path()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot open SQLite database {}: file is not a database (check the folder exists and is writable)",
            dir.path().join("junk.db").display()
        )
    );
    let err = Store::open("mysql://db/x", dir.path()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "database `mysql://db/x` is not understood: unknown kind of database (use sqlite:PATH or postgres://user@host/db)"
    );
}

#[tokio::test]
async fn sqlite_file_and_folder_are_created_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open("sqlite:subscribers/new.db", dir.path())
        .await
        .unwrap();
    assert!(dir.path().join("subscribers/new.db").is_file());
    drop(store);
    // WAL is a property of the file: a fresh connection sees it.
    let url = format!("sqlite:{}", dir.path().join("subscribers/new.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn postgres_down_is_reported_without_the_password() {
    // Port 1 on loopback: nothing listens there, the connection is refused.
    let err = Store::open(
        "postgres://tidings:s3cret@127.0.0.1:1/tidings",
        Path::new("."),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot connect to PostgreSQL at postgres://tidings:***@127.0.0.1:1/tidings: \
         connection refused — is the server running? (set TIDINGS_DATABASE_URL or `database` in tidings.toml)"
    );
}

/// The one rule (`src/store/rule.rs`), seen through every way a send asks
/// it: the CSV check (`blocked`), the audience count and the recipients.
async fn who_may_be_mailed(ctx: &Ctx) {
    let s = &ctx.store;
    for email in [
        "active@example.org",
        "unsub@example.org",
        "bounced@example.org",
        "removed@example.org",
    ] {
        let new = NewSubscriber {
            email: email.into(),
            ..NewSubscriber::default()
        };
        s.add(&new, "add", false).await.unwrap();
    }
    s.unsubscribe("unsub@example.org", "test").await.unwrap();
    s.mark_bounced("bounced@example.org", "550 no such user")
        .await
        .unwrap();
    s.remove("removed@example.org", "test").await.unwrap();
    // Never a subscriber, but unsubscribed by a link in a CSV send.
    s.unsubscribe("Csv-Only@Example.org", "test").await.unwrap();

    let asked: Vec<tidings::subscribers::Recipient> = [
        "active@example.org",
        "unsub@example.org",
        "bounced@example.org",
        "removed@example.org",
        "csv-only@example.org",
        "csv-new@example.org",
    ]
    .into_iter()
    .map(tidings::subscribers::Recipient::new)
    .collect();
    let blocked: std::collections::BTreeMap<String, String> =
        s.blocked(&asked).await.unwrap().into_iter().collect();
    assert_eq!(
        blocked,
        [
            ("bounced@example.org", "bounced"),
            ("csv-only@example.org", "suppressed"),
            ("removed@example.org", "suppressed"),
            ("unsub@example.org", "unsubscribed"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    );
    assert_eq!(s.audience_size(None).await.unwrap(), 1);
    let mailable: Vec<String> = s
        .recipients(None)
        .map_ok(|(_, r)| r.email)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(mailable, ["active@example.org"]);
}

fn learned(report: &str, email: &str, kind: tidings::store::Kind) -> tidings::store::Learned {
    tidings::store::Learned {
        report_id: report.into(),
        email: email.into(),
        kind,
        status: match kind {
            tidings::store::Kind::Soft => "4.2.2".into(),
            tidings::store::Kind::Hard => "5.1.1".into(),
            tidings::store::Kind::Complaint => String::new(),
        },
        diagnostic: format!("550 5.1.1 <{email}>: no such user"),
        campaign: None,
        source: if kind == tidings::store::Kind::Complaint {
            "arf"
        } else {
            "dsn"
        }
        .into(),
    }
}

/// The policy for what arrives after the relay said yes (issue 12): hard
/// bounce, soft bounces up to the limit, complaint; a report twice is one.
async fn bounces_and_complaints(ctx: &Ctx) {
    use tidings::store::{Action, Kind};
    let s = &ctx.store;
    for email in ["ana@example.org", "bob@example.org", "cara@example.org"] {
        let new = NewSubscriber {
            email: email.into(),
            ..NewSubscriber::default()
        };
        s.add(&new, "add", false).await.unwrap();
    }
    let hard = learned("<r1@mx>", "Ana@Example.org", Kind::Hard);
    assert_eq!(s.learn(&hard, 3).await.unwrap(), Action::Bounced);
    assert_eq!(s.learn(&hard, 3).await.unwrap(), Action::Repeat);
    let csv_only = learned("<r2@mx>", "dan@example.org", Kind::Hard);
    assert_eq!(s.learn(&csv_only, 3).await.unwrap(), Action::Suppressed);
    let complaint = learned("<r3@fbl>", "bob@example.org", Kind::Complaint);
    assert_eq!(s.learn(&complaint, 3).await.unwrap(), Action::Unsubscribed);
    for (i, want) in [
        Action::Counted { count: 1, limit: 3 },
        Action::Counted { count: 2, limit: 3 },
        Action::Bounced,
        Action::AlreadyBlocked,
    ]
    .into_iter()
    .enumerate()
    {
        let soft = learned(&format!("<soft{i}@mx>"), "cara@example.org", Kind::Soft);
        assert_eq!(s.learn(&soft, 3).await.unwrap(), want, "soft bounce {i}");
    }

    // A bounce outranks an unsubscribe: a link cannot bring back an
    // address that bounced after it unsubscribed.
    let fay = NewSubscriber {
        email: "fay@example.org".into(),
        ..NewSubscriber::default()
    };
    s.add(&fay, "add", false).await.unwrap();
    let fay_hash = email_hash_hex("fay@example.org");
    s.unsubscribe_by_hash(&fay_hash, "one-click").await.unwrap();
    let late = learned("<f1@mx>", "fay@example.org", Kind::Hard);
    assert_eq!(s.learn(&late, 3).await.unwrap(), Action::AlreadyBlocked);
    assert_eq!(
        s.resubscribe_by_hash(&fay_hash, "link").await.unwrap(),
        ResubscribeOutcome::NotSelfService
    );

    // Several reports about one send count as one soft bounce.
    let mut soft = learned("<e1@mx>", "eve@example.org", Kind::Soft);
    soft.campaign = Some(42);
    assert_eq!(
        s.learn(&soft, 3).await.unwrap(),
        Action::Counted { count: 1, limit: 3 }
    );
    soft.report_id = "<e2@mx>".into();
    assert_eq!(
        s.learn(&soft, 3).await.unwrap(),
        Action::Counted { count: 1, limit: 3 }
    );
    soft.report_id = "<e3@mx>".into();
    soft.campaign = Some(43);
    assert_eq!(
        s.learn(&soft, 3).await.unwrap(),
        Action::Counted { count: 2, limit: 3 }
    );

    // Nobody of them may be mailed; a complaint is for good.
    let asked: Vec<tidings::subscribers::Recipient> = [
        "ana@example.org",
        "bob@example.org",
        "cara@example.org",
        "dan@example.org",
    ]
    .into_iter()
    .map(tidings::subscribers::Recipient::new)
    .collect();
    assert_eq!(s.blocked(&asked).await.unwrap().len(), 4);
    let bob = email_hash_hex("bob@example.org");
    assert_eq!(
        s.resubscribe_by_hash(&bob, "link").await.unwrap(),
        ResubscribeOutcome::NotSelfService
    );
    let again = NewSubscriber {
        email: "bob@example.org".into(),
        ..NewSubscriber::default()
    };
    assert!(matches!(
        s.add(&again, "add", true).await.unwrap(),
        AddOutcome::Suppressed { reason, .. } if reason == "complained"
    ));
    let events = s.events("bob@example.org").await.unwrap();
    let last = events.last().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("complained", "arf"));
    assert_eq!(last.2.len(), "2026-11-26T08:27:00Z".len(), "{last:?}");
    // Removing the person keeps the complaint, not a liftable removal.
    s.remove("bob@example.org", "remove").await.unwrap();
    assert_eq!(
        s.suppression("bob@example.org").await.unwrap().as_deref(),
        Some("complained")
    );

    // What `bounces list` shows: newest first, the address while known,
    // the server's words without it.
    let rows = s.bounces(0).await.unwrap();
    let seen: Vec<(String, &str, String)> = rows
        .iter()
        .filter(|r| r.campaign.is_none())
        .map(|r| (r.email.clone(), r.kind.as_str(), r.action.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "fay@example.org".to_string(),
                "hard",
                "none (already blocked)".to_string()
            ),
            (
                "cara@example.org".into(),
                "soft",
                "none (already blocked)".into()
            ),
            ("cara@example.org".into(), "soft", "bounced".into()),
            ("cara@example.org".into(), "soft", "counted 2/3".into()),
            ("cara@example.org".into(), "soft", "counted 1/3".into()),
            // Removed since: only the hash is kept.
            ("".into(), "complaint", "unsubscribed".into()),
            ("".into(), "hard", "suppressed".into()),
            ("ana@example.org".into(), "hard", "bounced".into()),
        ]
    );
    assert_eq!(
        rows.last().unwrap().diagnostic,
        "550 5.1.1 <<address>>: no such user"
    );
}

/// Migration 0007 turns the subscriber tables' RFC 3339 text into Unix
/// milliseconds in place, on a database that has rows: the migrations up
/// to 0006 run by hand, rows go in as text, then 0007 runs.
macro_rules! text_times_become_milliseconds {
    ($pool:expr, $dir:literal) => {{
        let pool = $pool;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join($dir);
        let mut files: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let name = |f: &std::path::PathBuf| f.file_name().unwrap().to_str().unwrap().to_string();
        for f in files.iter().filter(|f| name(f).as_str() < "0007") {
            let sql = std::fs::read_to_string(f).unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
        }
        sqlx::raw_sql(
            "INSERT INTO subscribers (email, email_key, email_hash, status, source, created_at, updated_at, unsubscribed_at) \
             VALUES ('a@example.org', 'a@example.org', 'h1', 'unsubscribed', 't', '2026-11-26T08:27:00Z', '2026-11-27T09:00:01Z', '2026-11-27T09:00:01Z'); \
             INSERT INTO subscriber_lists (subscriber_id, list) SELECT id, 'monthly' FROM subscribers; \
             INSERT INTO suppressions (email_hash, reason, created_at) VALUES ('h2', 'removed', '2026-01-02T03:04:05Z'); \
             INSERT INTO subscriber_events (email_hash, event, source, at) VALUES ('h1', 'added', 't', '2026-11-26T08:27:00Z');",
        )
        .execute(&pool)
        .await
        .unwrap();
        let seventh = files.iter().find(|f| name(f).starts_with("0007")).unwrap();
        let sql = std::fs::read_to_string(seventh).unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
        let row: (i64, i64, Option<i64>) =
            sqlx::query_as("SELECT created_at, updated_at, unsubscribed_at FROM subscribers")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            row,
            (1_795_681_620_000, 1_795_770_001_000, Some(1_795_770_001_000))
        );
        let supp: i64 = sqlx::query_scalar("SELECT created_at FROM suppressions")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(supp, 1_767_323_045_000);
        let at: i64 = sqlx::query_scalar("SELECT at FROM subscriber_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(at, 1_795_681_620_000);
        // The list membership survived (no table was rebuilt).
        let lists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM subscriber_lists")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(lists, 1);
    }};
}

#[tokio::test]
async fn sqlite_text_times_become_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("old.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    text_times_become_milliseconds!(pool, "migrations/sqlite");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test.sh"]
async fn postgres_text_times_become_milliseconds() {
    let (url, name) = crate::common::create_pg_database().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    text_times_become_milliseconds!(pool.clone(), "migrations/postgres");
    pool.close().await;
    crate::common::drop_pg_database(&name).await;
}

/// A claim skips whoever the rule blocks and hands out only the others,
/// however the blocked ones are scattered (a CSV audience is checked only
/// at claim time).
async fn claims_never_hand_out_a_blocked_row(ctx: &Ctx) {
    use tidings::store::journal::{Audience, Journal};
    let s = &ctx.store;
    let rows: Vec<tidings::subscribers::Recipient> = (0..12)
        .map(|i| tidings::subscribers::Recipient::new(format!("r{i:02}@example.org")))
        .collect();
    let (campaign, _) = Journal::open_or_create(
        s,
        "issue-1",
        &Audience::Csv("list.csv".into()),
        false,
        Some(&rows),
    )
    .await
    .unwrap();
    // Blocked after the campaign was made: every other one from r01.
    for i in [1, 3, 5, 6, 7, 10] {
        s.unsubscribe(&format!("r{i:02}@example.org"), "test")
            .await
            .unwrap();
    }
    let (journal, _) = Journal::attach(s, campaign).await.unwrap();
    let mut handed = Vec::new();
    loop {
        let jobs = journal.claim(2).await.unwrap();
        if jobs.is_empty() {
            break;
        }
        assert!(jobs.len() <= 2);
        handed.extend(jobs.into_iter().map(|j| j.recipient.email));
    }
    assert_eq!(
        handed,
        [
            "r00@example.org",
            "r02@example.org",
            "r04@example.org",
            "r08@example.org",
            "r09@example.org",
            "r11@example.org"
        ]
    );
    let counts = journal.counts().await.unwrap();
    assert_eq!((counts.sending, counts.skipped), (6, 6));
}
