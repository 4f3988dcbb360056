// A gRPC-Go server and client (Debian's golang-google-grpc-dev) for the
// agent's Go tests, on services grpc ships, so that no generated code is
// needed: health Check is a unary call (NOT_FOUND for an unknown
// service), reflection's ServerReflectionInfo a bidirectional stream.
//
//	go_grpc server [-port P] [-cert C -key K]   TLS if given a certificate
//	go_grpc client [-tls] ADDR                  Check(ok), Check(missing),
//	                                            one reflection exchange
//
// The server prints "listening on <port>"; the client prints one line per
// call: the status code, and the serving status it got.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go_grpc server|client ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "server":
		server(os.Args[2:])
	case "client":
		client(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func server(args []string) {
	flags := flag.NewFlagSet("server", flag.ExitOnError)
	port := flags.Int("port", 0, "port on 127.0.0.1")
	cert := flags.String("cert", "", "certificate (PEM); plaintext (h2c) without")
	key := flags.String("key", "", "private key (PEM)")
	flags.Parse(args)
	var options []grpc.ServerOption
	if *cert != "" {
		creds, err := credentials.NewServerTLSFromFile(*cert, *key)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		options = append(options, grpc.Creds(creds))
	}
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := grpc.NewServer(options...)
	checks := health.NewServer()
	checks.SetServingStatus("ok", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, checks)
	reflection.Register(srv)
	fmt.Printf("listening on %d\n", listener.Addr().(*net.TCPAddr).Port)
	if err := srv.Serve(listener); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func client(args []string) {
	flags := flag.NewFlagSet("client", flag.ExitOnError)
	useTLS := flags.Bool("tls", false, "TLS (any certificate accepted)")
	flags.Parse(args)
	transport := grpc.WithInsecure()
	if *useTLS {
		transport = grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, flags.Arg(0), transport, grpc.WithBlock())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	checks := healthpb.NewHealthClient(conn)
	for _, service := range []string{"ok", "missing"} {
		resp, err := checks.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		fmt.Println("check", service, status.Code(err), resp.GetStatus())
	}
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	list := &reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}
	if err := stream.Send(list); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	reply, err := stream.Recv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stream.CloseSend()
	// io.EOF: the server ended the stream with an OK status.
	if _, err = stream.Recv(); err == io.EOF {
		err = nil
	}
	fmt.Println("reflection", len(reply.GetListServicesResponse().GetService()), "services", status.Code(err))
}
