{
  description = "reemo-bundle: reproducible appliance bundles for Docker Swarm, and ws-relay-server";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs { inherit system; };
      common = {
        version = "0.1.0";
        src = pkgs.lib.cleanSource ./.;
        cargoLock.lockFile = ./Cargo.lock;
        # Tests need a Docker engine and a swarm; they run in CI through .ci/run.
        doCheck = false;
      };
      # Static glibc executables, as the bundle carries them (-C target-feature=+crt-static).
      static = drv: drv.overrideAttrs (old: {
        RUSTFLAGS = "-C target-feature=+crt-static";
        buildInputs = (old.buildInputs or [ ]) ++ [ pkgs.glibc.static ];
      });
    in
    {
      packages.${system} = rec {
        reemo-bundle = static (pkgs.rustPlatform.buildRustPackage (common // {
          pname = "reemo-bundle";
          cargoBuildFlags = [ "-p" "reemo-bundle" "--bin" "reemo-bundle" ];
        }));
        ws-relay-server = static (pkgs.rustPlatform.buildRustPackage (common // {
          pname = "ws-relay-server";
          cargoBuildFlags = [ "-p" "ws-relay-server" "--bin" "ws-relay-server" ];
        }));
        # the Reemo services' stand-in (tests and demos of the Infra appliance)
        reemo-standin = static (pkgs.rustPlatform.buildRustPackage (common // {
          pname = "reemo-standin";
          cargoBuildFlags = [ "-p" "reemo-standin" "--bin" "reemo-standin" ];
        }));
        default = reemo-bundle;
      };

      devShells.${system}.default = pkgs.mkShell {
        packages = with pkgs; [ cargo rustc clippy rustfmt docker busybox ];
      };

      checks.${system} = {
        fmt = pkgs.runCommand "cargo-fmt-check" { nativeBuildInputs = [ pkgs.cargo pkgs.rustfmt ]; } ''
          cd ${./.} && cargo fmt --all -- --check && touch $out
        '';
        reemo-bundle = self.packages.${system}.reemo-bundle;
        ws-relay-server = self.packages.${system}.ws-relay-server;
        reemo-standin = self.packages.${system}.reemo-standin;
      };
    };
}
