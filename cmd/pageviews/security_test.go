package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/gofaust/pageviews/internal/app"
	"github.com/gofaust/pageviews/internal/pageview"
)

// testCA makes a CA and a server certificate for 127.0.0.1, writes the CA
// to a PEM file and returns it with the server's TLS config.
func testCA(t testing.TB) (caFile string, server *tls.Config) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pageviews test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
}

// TestSecureBroker runs the worker against a broker that demands TLS and
// SASL/SCRAM-SHA-512: it works with the right credentials and stops at
// start with an error naming the cause with wrong ones.
func TestSecureBroker(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	caFile, serverTLS := testCA(t)
	broker, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.TLS(serverTLS),
		kfake.EnableSASL(),
		kfake.Superuser("SCRAM-SHA-512", "pageviews", "s3cret-pass"),
		kfake.GroupMinSessionTimeout(time.Second),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)
	vars := func(user, pass, ca string) map[string]string {
		return map[string]string{
			"KAFKA_BROKERS":        broker.ListenAddrs()[0],
			"KAFKA_TLS_ENABLED":    "true",
			"KAFKA_TLS_CA_FILE":    ca,
			"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
			"KAFKA_SASL_USERNAME":  user,
			"KAFKA_SASL_PASSWORD":  pass,
			"WEB_ADDR":             "127.0.0.1:0",
			"DATA_DIR":             t.TempDir(),
			"COMMIT_INTERVAL":      "100ms",
		}
	}

	t.Run("right credentials", func(t *testing.T) {
		now := time.Now().Truncate(time.Minute).Add(30 * time.Second)
		w := startWorker(t, vars("pageviews", "s3cret-pass", caFile), func() time.Time { return now })
		for range 3 {
			getJSON(t, w.base+"/count/?page=/secure", nil)
		}
		eventually(t, 10*time.Second, "counted over TLS and SASL", func() (bool, string) {
			var rep pageview.Report
			getJSON(t, w.base+"/report/", &rep)
			return rep.Pages["/secure"].Count == 3, ""
		})
		if strings.Contains(w.logs.String(), "s3cret-pass") {
			t.Error("the SASL password appears in the log")
		}
		if !strings.Contains(w.logs.String(), `"sasl_password":"*****"`) {
			t.Error("the start-up config line does not show the password masked")
		}
	})

	fail := func(t *testing.T, vars map[string]string) string {
		t.Helper()
		cfg, err := loadConfig(env(vars))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		err = runWorker(ctx, cfg, slog.New(slog.DiscardHandler), app.Hooks{Clock: time.Now})
		if err == nil {
			t.Fatal("worker started with bad credentials")
		}
		return err.Error()
	}
	t.Run("wrong password", func(t *testing.T) {
		msg := fail(t, vars("pageviews", "wrong", caFile))
		if !strings.Contains(msg, "SASL") || strings.Contains(msg, "wrong") {
			t.Errorf("error %q should name SASL authentication and never show the password", msg)
		}
	})
	t.Run("untrusted broker certificate", func(t *testing.T) {
		otherCA, _ := testCA(t)
		msg := fail(t, vars("pageviews", "s3cret-pass", otherCA))
		if !strings.Contains(msg, "certificate") {
			t.Errorf("error %q should name the certificate problem", msg)
		}
	})
}
