package web

import (
	"encoding/json"
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
