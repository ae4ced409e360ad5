from bench.run import main

main(prog_name="msgbus bench")
