package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestOrderedKeepsTheOrderOfItsFields(t *testing.T) {
	b, err := json.Marshal(Ordered{"z", 1, "a", Ordered{"y", "x\"", "b", []int32{2, 3}}, "m", true})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"z":1,"a":{"y":"x\"","b":[2,3]},"m":true}`; string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
	if _, err := json.Marshal(Ordered{"f", func() {}}); err == nil {
		t.Error("a value JSON cannot hold marshalled without an error")
	}
}

func TestJSONPagesAnswerTheirErrorsStatus(t *testing.T) {
	page := Page{Path: "/p/", JSON: func(r *http.Request) (any, error) {
		v, err := Param(r, "page", "/", 5)
		switch {
		case err != nil:
			return nil, err
		case v == "/fail":
			return nil, errors.New("it failed")
		case v == "/busy":
			return nil, fmt.Errorf("wrapped: %w", Errorf(http.StatusServiceUnavailable, "busy"))
		}
		return map[string]string{"page": v}, nil
	}}
	var logged strings.Builder
	h := page.Serve(slog.New(slog.NewTextHandler(&logged, nil)))
	for _, tc := range []struct {
		target, body string
		code         int
	}{
		{"/p/", `{"page":"/"}`, http.StatusOK},
		{"/p/?page=/abcd", `{"page":"/abcd"}`, http.StatusOK},
		{"/p/?page=/abcde", `{"error":"page is longer than the limit of 5 bytes"}`, http.StatusBadRequest},
		{"/p/?page=/fail", `{"error":"it failed"}`, http.StatusInternalServerError},
		{"/p/?page=/busy", `{"error":"wrapped: busy"}`, http.StatusServiceUnavailable},
	} {
		rec := httptest.NewRecorder()
		h(rec, httptest.NewRequest(http.MethodGet, tc.target, nil))
		if got := strings.TrimSpace(rec.Body.String()); rec.Code != tc.code || got != tc.body {
			t.Errorf("%s: %d %s; want %d %s", tc.target, rec.Code, got, tc.code, tc.body)
		}
	}
	if n := strings.Count(logged.String(), "page failed"); n != 2 {
		t.Errorf("logged %d failures, want the 2 answers of 500 and above:\n%s", n, logged.String())
	}
}
