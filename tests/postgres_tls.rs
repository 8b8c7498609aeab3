//! TLS to the queue's database by the URL's `sslmode`, against a real private PostgreSQL server
//! with a self-signed certificate for "localhost": `require` encrypts without checking the
//! certificate (libpq's meaning), `verify-full` accepts it only from `sslrootcert`, and a server
//! without TLS is refused under `require`. Ignored, saying how to install it, without PostgreSQL.

mod common;

use common::WAIT;
use common::postgres::{DATABASE, PASSWORD, PgServer, ROLE};
use common::tls::TestCert;
use smtp2gmail::config::DatabaseUrl;
use smtp2gmail::queue::postgres::{Database, DatabaseError};

/// Opens the database at `url` and asks the server whether this session is encrypted.
async fn encrypted(url: &str) -> Result<bool, DatabaseError> {
    let url = DatabaseUrl::parse(url).expect("a valid URL");
    let (database, _) = tokio::time::timeout(WAIT, Database::open(url, 1))
        .await
        .expect("opening the database hangs")?;
    let client = database.client().await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl answers");
    Ok(row.get(0))
}

fn url(server: &PgServer, query: &str) -> String {
    format!(
        "postgres://{ROLE}:{PASSWORD}@localhost:{}/{DATABASE}?{query}",
        server.port()
    )
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn sslmode_decides_encryption_and_which_certificates_are_trusted() {
    let mut server = PgServer::start();
    // Without TLS on the server: `prefer` falls back to plain, `require` refuses.
    assert!(!encrypted(&url(&server, "sslmode=prefer")).await.unwrap());
    let err = encrypted(&url(&server, "sslmode=require"))
        .await
        .unwrap_err();
    assert!(matches!(err, DatabaseError::Tls { .. }), "{err}");

    let cert = TestCert::new();
    let key = std::fs::read_to_string(cert.key_path()).unwrap();
    server.enable_tls(&cert.pem, &key);

    assert!(encrypted(&url(&server, "sslmode=require")).await.unwrap());
    assert!(
        encrypted(&url(&server, "")).await.unwrap(),
        "prefer uses TLS when offered"
    );
    let trusted = format!(
        "sslmode=verify-full&sslrootcert={}",
        cert.cert_path().display()
    );
    assert!(encrypted(&url(&server, &trusted)).await.unwrap());

    // The public CAs do not know a self-signed certificate.
    let err = encrypted(&url(&server, "sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(matches!(err, DatabaseError::Tls { .. }), "{err}");
    assert!(
        err.to_string().contains("sslrootcert"),
        "says what to fix: {err}"
    );
}
