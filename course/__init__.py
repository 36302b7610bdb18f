"""The course's file contract, without torch: reading and writing its files (`files`, `sonnets`), the
metrics it grades by (`metrics`), and whether a predictions folder is ready to hand in (`hand_in`)."""
