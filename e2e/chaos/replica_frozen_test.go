package chaos

// replica-frozen is written with the fence it proves (server/command_lease.go,
// commandlease): a replica's process is SIGSTOPped (testdrive.Replica.Pause)
// past its command lease while it runs a pull's command, another replica
// runs that pull's next command, and the frozen one is woken
// (Replica.Resume) while it does. The scenario drives it with a stalled plan
// (world.stall) sent to the victim by world.send, and ends with
// world.verdict: no overlap of the pull's runs, no lock or comment from the
// woken replica.
