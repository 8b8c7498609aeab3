//! What the inbox's answers give other web pages: nothing. A page on another site reaching the
//! inbox through a loopback name (`127.0.0.2`, `localhost`…) with `<img>` or a no-cors `fetch`
//! is refused; answers may not be embedded by another origin; an origin is scheme, host and
//! port; parts a browser could run are downloaded under a name that reads as it is; and message
//! HTML cannot reach the network through what no Content-Security-Policy governs.

mod common;

use common::inbox::{console, json, send_raw};
use common::process::ServerProcess;
use common::serving::Serving;
use reqwest::header::{HOST, ORIGIN};

/// A message with an HTML body that tries every way out, an inline image, an SVG attachment and
/// an attachment whose name hides its extension with U+202E.
const HOSTILE: &str = "Subject: isolation\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/html\r\n\r\n<html><head>\
<link rel=preconnect href=https://tracker.example/p>\
<link rel=dns-prefetch href=//tracker.example>\
<link rel=prefetch href=https://tracker.example/f><link rel=preload as=image href=https://tracker.example/i>\
<meta http-equiv=refresh content=\"0;url=https://tracker.example/r\"></head>\
<body><img src=\"cid:pic\"></body></html>\r\n\
--b\r\nContent-Type: image/png\r\nContent-ID: <pic>\r\n\r\npng\r\n\
--b\r\nContent-Type: image/svg+xml\r\nContent-Disposition: attachment; filename=logo.svg\r\n\r\n\
<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>\r\n\
--b\r\nContent-Type: application/pdf\r\n\
Content-Disposition: attachment; filename*=UTF-8''invoice%E2%80%AEexe.pdf\r\n\r\n%PDF\r\n\
--b--\r\n.\r\n";

async fn started() -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().unwrap();
    let server = console(dir.path()).await;
    common::assert_code(&send_raw(server.smtp, HOSTILE.as_bytes()).await, 250);
    (dir, server)
}

fn port(server: &ServerProcess) -> String {
    let authority = server.http_authority();
    authority.rsplit(':').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_on_other_sites_cannot_load_the_inbox() {
    let (_dir, server) = started().await;
    let client = reqwest::Client::new();
    let message = json(&server, "/api/v1/message/latest").await;
    let part = message["Attachments"][0]["PartID"]
        .as_str()
        .unwrap()
        .to_string();
    let port = port(&server);
    for path in [
        "/api/v1/messages".to_string(),
        "/api/v1/search?query=isolation".to_string(),
        "/api/v1/message/latest".to_string(),
        "/api/v1/message/latest/raw".to_string(),
        "/api/v1/message/latest/headers".to_string(),
        format!("/api/v1/message/latest/part/{part}"),
        "/view/latest.html".to_string(),
    ] {
        // What Chromium sends for `<img src>` or a no-cors fetch from another site, through a
        // loopback name the Host check lets through.
        // `same-site`: a page on another port of the same host (a local app on localhost:8000).
        for site in ["cross-site", "same-site"] {
            for (mode, dest) in [
                ("no-cors", "image"),
                ("no-cors", "empty"),
                ("navigate", "iframe"),
            ] {
                let response = client
                    .get(server.url(&path))
                    .header(HOST, format!("127.0.0.2:{port}"))
                    .header("sec-fetch-site", site)
                    .header("sec-fetch-mode", mode)
                    .header("sec-fetch-dest", dest)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 403, "{path} ({site}, {mode}, {dest})");
            }
        }
        // The inbox's own page, and clients that are no browser, are served; and no other
        // origin may embed what they get.
        for site in [Some("same-origin"), None] {
            let mut request = client.get(server.url(&path));
            if let Some(site) = site {
                request = request.header("sec-fetch-site", site);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(
                response.headers()["cross-origin-resource-policy"],
                "same-origin",
                "{path}"
            );
        }
    }
    // A link followed from another site opens the inbox.
    let followed = client
        .get(server.url("/"))
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-dest", "document")
        .send()
        .await
        .unwrap();
    assert_eq!(followed.status(), 200);
    assert_eq!(
        followed.headers()["cross-origin-resource-policy"],
        "same-origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_is_scheme_host_and_port() {
    let (_dir, server) = started().await;
    let client = reqwest::Client::new();
    let authority = server.http_authority();
    let messages = server.url("/api/v1/messages");
    let with_origin = |origin: String| client.get(&messages).header(ORIGIN, origin);
    let own = with_origin(format!("http://{authority}"))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    // A page served over TLS on the same host and port is another origin.
    let tls = with_origin(format!("https://{authority}"))
        .send()
        .await
        .unwrap();
    assert_eq!(tls.status(), 403);
    // Unless a TLS proxy in front says that is how the inbox was reached.
    let proxied = with_origin(format!("https://{authority}"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_content_stays_inert() {
    let (_dir, server) = started().await;
    let message = json(&server, "/api/v1/message/latest").await;
    let attachments = message["Attachments"].as_array().unwrap();
    let svg = &attachments[0];
    let pdf = &attachments[1];
    assert_eq!(svg["ContentType"], "image/svg+xml");

    // SVG runs scripts when shown: downloaded, whatever it says.
    let part = |id: &serde_json::Value| {
        server.url(&format!(
            "/api/v1/message/latest/part/{}",
            id["PartID"].as_str().unwrap()
        ))
    };
    let response = reqwest::get(part(svg)).await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let disposition = response.headers()["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");

    // U+202E would show `invoiceexe.pdf` as `invoicefdp.exe`: the name is what the bytes say.
    assert_eq!(pdf["FileName"], "invoiceexe.pdf");
    let response = reqwest::get(part(pdf)).await.unwrap();
    let disposition = response.headers()["content-disposition"].to_str().unwrap();
    assert_eq!(
        disposition,
        "inline; filename=\"invoiceexe.pdf\"; filename*=UTF-8''invoiceexe.pdf"
    );

    // The HTML reaches nothing: resource hints and refreshes are disabled (no policy governs
    // them), DNS prefetching is off, the inline image is in the page.
    let response = reqwest::get(server.url("/view/latest.html?embed=1"))
        .await
        .unwrap();
    assert_eq!(response.headers()["x-dns-prefetch-control"], "off");
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("img-src data:;"),
        "{policy}"
    );
    let html = response.text().await.unwrap();
    for rel in ["preconnect", "dns-prefetch", "prefetch", "preload"] {
        assert!(
            html.contains(&format!("<link rel=\"x-disabled\" rel={rel} ")),
            "{rel}: {html}"
        );
    }
    assert!(html.contains("<meta http-equiv=\"x-disabled\" content=\"\" http-equiv=refresh "));
    assert!(
        html.contains("<img src=\"data:image/png;base64,cG5n\">"),
        "{html}"
    );
}
