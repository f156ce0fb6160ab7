// A CRI caller built on grpc-go, for the interposer's caller tests: one unary call with raw
// request bytes (a raw codec, no generated types), the result printed as one JSON line.
// With --session it keeps one connection and makes the calls it reads from standard input,
// one JSON line each ({"id", "method", "request" hex, "timeout_ms"}), each at once and
// concurrently, answering each with a JSON line ({"id", "code", "message", "response", "ms"})
// as it ends: a long-lived connection like kubelet's.
//
// It dials the bare socket path with a unix dialer, as kubelet's CRI client did before
// kubernetes#123463: grpc-go then sends the path as :authority. --authority localhost sets
// grpc.WithAuthority("localhost"), as kubelet does today.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func main() {
	socket := flag.String("socket", "", "CRI socket path")
	authority := flag.String("authority", "default", "default | localhost")
	method := flag.String("method", "", "full method path")
	request := flag.String("request", "", "request message, hex")
	timeoutMs := flag.Int("timeout-ms", 30000, "deadline")
	cancelMs := flag.Int("cancel-after-ms", 0, "cancel after this long (0: never)")
	traceparent := flag.String("traceparent", "", "W3C traceparent to send")
	session := flag.Bool("session", false, "one connection, calls from standard input")
	flag.Parse()

	opts := []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)),
	}
	if *authority == "localhost" {
		opts = append(opts, grpc.WithAuthority("localhost"))
	}
	if *session {
		runSession(*socket, opts)
		return
	}
	out := map[string]interface{}{"code": 0, "message": "", "response": ""}
	conn, err := grpc.Dial(*socket, opts...)
	if err == nil {
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*timeoutMs)*time.Millisecond)
		defer cancel()
		if *traceparent != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", *traceparent)
		}
		if *cancelMs > 0 {
			go func() {
				time.Sleep(time.Duration(*cancelMs) * time.Millisecond)
				cancel()
			}()
		}
		req, _ := hex.DecodeString(*request)
		var resp []byte
		err = conn.Invoke(ctx, *method, &req, &resp, grpc.ForceCodec(rawCodec{}))
		if err == nil {
			out["response"] = hex.EncodeToString(resp)
		}
	}
	if err != nil {
		s := status.Convert(err)
		out["code"], out["message"] = int(s.Code()), s.Message()
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

type sessionCall struct {
	ID        int    `json:"id"`
	Method    string `json:"method"`
	Request   string `json:"request"`
	TimeoutMs int    `json:"timeout_ms"`
}

func runSession(socket string, opts []grpc.DialOption) {
	conn, err := grpc.Dial(socket, append(opts, grpc.WithBlock())...)
	if err != nil {
		os.Exit(2)
	}
	defer conn.Close()
	var mu sync.Mutex
	var wg sync.WaitGroup
	enc := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	for in.Scan() {
		var c sessionCall
		if json.Unmarshal(in.Bytes(), &c) != nil {
			continue
		}
		wg.Add(1)
		go func(c sessionCall) {
			defer wg.Done()
			if c.TimeoutMs == 0 {
				c.TimeoutMs = 60000
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(c.TimeoutMs)*time.Millisecond)
			defer cancel()
			req, _ := hex.DecodeString(c.Request)
			var resp []byte
			start := time.Now()
			err := conn.Invoke(ctx, c.Method, &req, &resp, grpc.ForceCodec(rawCodec{}))
			out := map[string]interface{}{"id": c.ID, "code": 0, "message": "", "response": "",
				"ms": float64(time.Since(start).Microseconds()) / 1000}
			if err != nil {
				s := status.Convert(err)
				out["code"], out["message"] = int(s.Code()), s.Message()
			} else {
				out["response"] = hex.EncodeToString(resp)
			}
			mu.Lock()
			enc.Encode(out)
			mu.Unlock()
		}(c)
	}
	wg.Wait()
}
