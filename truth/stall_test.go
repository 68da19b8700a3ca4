package truth

import (
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// TestStall: a worker processing a steady flow is stopped (SIGSTOP) for 5
// seconds while 60k records arrive, then continued. The first consumer_lag
// it samples after the resume is the lag the broker shows: the high
// watermark is asked at each sample, not taken from the fetches the
// stopped worker did not make.
func TestStall(t *testing.T) {
	s := newScenario(t, "stall")
	w := s.start("worker", t.TempDir(), nil)
	w.WaitReady(t, time.Minute)

	s.steadyFlow()
	// Caught up, so that every sample before the stop shows lag 0.
	hwm := s.caughtUp(time.Minute)
	s.settled(w, hwm, 30*time.Second)

	st := s.stall(w)

	hwm = s.caughtUp(2 * time.Minute)
	s.settled(w, hwm, 30*time.Second)

	s.stallResumed(w, st)
	s.partitionGauges(w, "consumer_lag", "0 once caught up", zeros(hwm))
	s.partitionGauges(w, "end_offset", "broker high watermark at the end", hwm)
	s.partitionCounts(w, "messages_received", "records on the partition (high watermark)", hwm)
}

// steadyFlow sends the steady flow: 200 records every 100ms, for 3
// seconds.
func (s *scenario) steadyFlow() {
	prod := s.kafka.producer()
	var (
		wg   sync.WaitGroup
		stop = make(chan struct{})
		sent int
		ferr error
	)
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				batch := make([]*sarama.ProducerMessage, 200)
				for i := range batch {
					batch[i] = view(fmt.Sprintf("/flow/%d", (sent+i)%500), sent+i, now)
				}
				if err := prod.send(batch); err != nil {
					ferr = err
					return
				}
				sent += len(batch)
			}
		}
	})
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	if ferr != nil {
		s.t.Fatalf("the steady flow: %v", ferr)
	}
}

// stallState is what the broker showed while the worker was stopped, and
// when the stop and the resume were.
type stallState struct {
	stopped, resumed time.Time
	hwm              map[int32]int64 // high watermarks at the resume
	brokerLag        int64           // high watermark - committed, summed
}

// stall stops w (SIGSTOP) for 5 seconds while 60k records arrive, then
// continues it, and returns the broker's lag at the resume.
func (s *scenario) stall(w *worker) stallState {
	t := s.t
	const pause, burst = 5 * time.Second, 60_000
	stopped := time.Now().Truncate(time.Millisecond)
	w.Signal(t, syscall.SIGSTOP)
	t.Cleanup(func() {
		if w.Running() {
			_ = w.Cmd.Process.Signal(syscall.SIGCONT)
		}
	})
	// Every record of the burst is stamped with the moment of the stop: no
	// record the worker processed is younger.
	s.kafka.produce(burst, func(i int) *sarama.ProducerMessage {
		return view(fmt.Sprintf("/stall/%d", i%500), i, stopped)
	})
	time.Sleep(time.Until(stopped.Add(pause)))
	// Nothing moves while the worker is stopped and nothing is produced:
	// the broker's lag now is the lag at the resume.
	hwmStall := s.kafka.hwms(sourceTopic)
	committedStall := s.kafka.committed(group, sourceTopic)
	resumed := time.Now()
	w.Signal(t, syscall.SIGCONT)
	committedAfter := s.kafka.committed(group, sourceTopic)
	var brokerLag int64
	for p, h := range hwmStall {
		brokerLag += h - committedStall[p]
	}
	t.Logf("broker lag at the resume %d (high watermarks %v, committed %v; committed right after SIGCONT %v)",
		brokerLag, hwmStall, committedStall, committedAfter)
	if brokerLag < burst {
		t.Fatalf("the broker's lag at the resume is %d, below the %d records produced during the stop", brokerLag, burst)
	}
	return stallState{stopped: stopped, resumed: resumed, hwm: hwmStall, brokerLag: brokerLag}
}

// stallResumed checks the first samples w took after the resume against
// the broker's figures of the stall.
//
// Samples taken before the stop may still sit in the client's buffer and
// arrive after the resume; they show the caught-up state (lag 0,
// end_offset below the burst). The first sample taken after the resume is
// the first whose end_offset is the high watermark of the stop, and its
// lag the first non-zero one: the burst's records were still waiting then.
func (s *scenario) stallResumed(w *worker, st stallState) {
	t := s.t
	resumed, brokerLag := st.resumed, st.brokerLag
	var firstLag float64
	var stale, fresh []string
	lagSecs := map[int32]float64{}
	for p, h := range st.hwm {
		var lags []point
		for _, pt := range w.sink.find("consumer_lag", map[string]string{"partition": partitionKey(p)}) {
			if !pt.At.Before(resumed) {
				lags = append(lags, pt)
			}
		}
		skipped := 0
		for _, pt := range lags {
			if pt.Values[0] == 0 {
				skipped++
				continue
			}
			firstLag += pt.Values[0]
			break
		}
		ends := w.sink.find("end_offset", map[string]string{"partition": partitionKey(p)})
		for _, pt := range ends {
			if pt.At.Before(resumed) {
				continue
			}
			if pt.Values[0] != float64(h) {
				stale = append(stale, fmt.Sprintf("p%d end_offset %v", p, pt.Values[0]))
				continue
			}
			fresh = append(fresh, fmt.Sprintf("p%d", p))
			break
		}
		for _, pt := range w.sink.find("consumer_lag_seconds", map[string]string{"partition": partitionKey(p)}) {
			if !pt.At.Before(resumed) && pt.Values[0] > 0 {
				lagSecs[p] = pt.Values[0]
				break
			}
		}
		if skipped > 0 {
			t.Logf("partition %d: %d consumer_lag samples of 0 arrived after the resume before the first above 0", p, skipped)
		}
	}
	t.Logf("samples from before the stop that arrived after the resume: %v", stale)
	s.check(len(fresh) == partitions, "end_offset", "the high watermark of the stall, in a sample after the resume, per partition",
		fmt.Sprintf("%d partitions", len(fresh)))
	s.check(firstLag >= 0.8*float64(brokerLag) && firstLag <= float64(brokerLag), "consumer_lag",
		fmt.Sprintf("first sample after the resume, summed, between 80%% and 100%% of the broker's lag at the resume (%d: high watermark - committed)", brokerLag),
		fmt.Sprintf("%.0f (%.0f%%)", firstLag, 100*firstLag/float64(brokerLag)))
	// The last record processed before the resume is at most as young as the
	// stop: while the partition lags, its age is at least the pause.
	least := resumed.Sub(st.stopped).Seconds()
	ok := len(lagSecs) == partitions
	for _, v := range lagSecs {
		ok = ok && v >= least
	}
	s.check(ok, "consumer_lag_seconds", fmt.Sprintf("first sample above 0 after the resume, per partition, at least the stop (%.2fs): no record processed is younger", least),
		fmt.Sprint(lagSecs))
}
