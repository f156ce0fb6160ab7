// A CRI caller built on grpc-go, for the interposer's caller tests: one unary call with raw
// request bytes (a raw codec, no generated types), the result printed as one JSON line.
//
// It dials the bare socket path with a unix dialer, as kubelet's CRI client did before
// kubernetes#123463: grpc-go then sends the path as :authority. --authority localhost sets
// grpc.WithAuthority("localhost"), as kubelet does today.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"net"
	"os"
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
